"""``picogrid site init`` / ``site check`` (tools/site_cli.py): written files pass the check and
``picogrid plan``; broken ones are named by line, section and key."""

import pathlib

import pytest

from picogrid import cli
from picogrid.tools import site_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("flags", [
    [],
    ["--kind", "home", "--storage-kwh", "13.5", "--import-max-kw", "6", "--export-max-kw", "0", "--pv-kw", "9.6",
     "--loads", "critical,deferrable", "--load-kw", "3.7", "--import-price-per-kwh", "32", "--tick-s", "900"],
    ["--kind", "home", "--loads", "normal", "--horizon-h", "12"],
    ["--kind", "bench"],
    ["--kind", "bench", "--storage", "battery", "--storage-kwh", "0.001", "--storage-kw", "0.003"],
], ids=["home-defaults", "home-flags", "home-one-load", "bench-defaults", "bench-battery"])
def test_init_passes_check_and_plan(tmp_path, capsys, flags):
    path = tmp_path / "new.toml"
    assert cli.main(["site", "init", str(path), *flags]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["site", "check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli.main(["plan", "--site", str(path)]) == 0
    out = capsys.readouterr().out
    assert "status solved" in out and "setpoints:" in out


def test_init_flags_land_in_the_file(tmp_path):
    path = tmp_path / "home.toml"
    site_cli.main(["init", str(path), "--storage-kwh", "10", "--import-max-kw", "6", "--loads", "critical,normal"])
    text = path.read_text()
    site, problems = site_cli.check_site(path)
    assert not problems
    assert site["grid"]["import_max_w"] == 6000.0 and site["storage"]["energy_max_j"] == pytest.approx(0.95 * 3.6e7)
    assert [b.get("priority") for n, b in site["boards"].items() if n.startswith("load")] == ["critical", "normal"]
    assert site["deferrable"]["n_jobs"] == 0     # no deferrable load, no job slots
    assert text.count("#") > 20                  # commented


def test_init_keeps_an_existing_file(tmp_path, capsys):
    path = tmp_path / "site.toml"
    path.write_text("mine")
    assert site_cli.main(["init", str(path)]) == 2 and path.read_text() == "mine"
    assert site_cli.main(["init", str(path), "--force"]) == 0


def test_init_refuses_bad_flags(tmp_path):
    with pytest.raises(SystemExit):
        site_cli.main(["init", str(tmp_path / "x.toml"), "--loads", "critical,urgent"])
    with pytest.raises(SystemExit):
        site_cli.main(["init", str(tmp_path / "x.toml"), "--tick-s", "7"])     # does not divide a day


@pytest.mark.parametrize("name", ["lab.toml", "site.toml"])
def test_shipped_sites_pass(name):
    _, problems = site_cli.check_site(ROOT / "edge" / "sites" / name)
    assert problems == []


# (name, text replaced in the home init output, replacement, expected fragment of one problem)
BROKEN = [
    ("typo", "efficiency_charge =", "efficency_charge =",
     "[storage] efficency_charge: unknown key (did you mean 'efficiency_charge'?)"),
    ("tariff section", "[reserve]", "[tariff]\nimport_price_per_kwh = 25\n\n[reserve]",
     "tariff: unknown key (prices come with the data"),
    ("kW as W", "import_max_w = 10000.0", "import_max_w = 6.0", "[grid] import_max_w: 6 W is too small for a home"),
    ("5 MW home", "capability_w = 6000.0", "capability_w = 5.0e6", "[pv] capability_w: 5000000.0 is outside"),
    ("efficiency", "efficiency_discharge = 0.95", "efficiency_discharge = 95",
     "[storage] efficiency_discharge: 95 is outside"),
    ("not a day", "n_ticks = 288", "n_ticks = 96", "a home's day is 86400 s"),
    ("priority typo", 'priority = "normal"', 'priority = "norml"',
     "[boards.load2] priority: unknown priority 'norml' (did you mean 'normal'?)"),
    ("role typo", 'role = "load3"', 'role = "lod3"', "[boards.load3] role: unknown role 'lod3' (did you mean"),
    ("limits typo", "limits = { power_max_w = 6600.0 }", "limits = { power_mx_w = 6600.0 }",
     "[boards.pv] power_mx_w: unknown key (did you mean 'power_max_w'?)"),
    ("optimizer key", "solver =", "solvr =", "[optimizer] solvr: unknown key (did you mean 'solver'?)"),
    ("string number", "import_max_w = 10000.0", 'import_max_w = "10 kW"', "[grid] import_max_w: must be a number"),
    ("voll class", "voll_per_j = { critical", "voll_per_j = { critcal", "unknown priority class 'critcal'"),
    ("profile", 'profile = "site"', 'profile = "home"', 'profile: must be "site" (a home) or "lab"'),
]


@pytest.mark.parametrize("name, old, new, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_check_names_the_problem(tmp_path, capsys, name, old, new, expected):
    good = site_cli.render_site(site_cli.SiteSpec())
    assert old in good, old
    path = tmp_path / "broken.toml"
    path.write_text(good.replace(old, new, 1))
    assert cli.main(["site", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    first = new.split("\n")[0]
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.startswith(first))
    assert f"line {line}: " in err, err       # located in the file


def test_check_reports_what_the_edge_refuses(tmp_path, capsys):
    good = site_cli.render_site(site_cli.SiteSpec())
    path = tmp_path / "x.toml"
    # a valid-looking optimiser value MpcConfig refuses: passed through with its own words
    path.write_text(good.replace('solver = "highs"', 'solver = "cplex"'))
    assert site_cli.main(["check", str(path)]) == 1
    assert "solver must be 'osqp' or 'highs'" in capsys.readouterr().err
    path.write_text("[bench\n")
    assert site_cli.main(["check", str(path)]) == 1
    assert "not valid TOML" in capsys.readouterr().err
