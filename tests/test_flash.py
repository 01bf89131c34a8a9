"""`picogrid flash` / `picogrid boards` (tools/flash.py): config generation, secrets, dry run.

A real flash needs a Pico on USB; these tests cover everything up to the mpremote calls, and
run the real mpy-cross on the deployed modules. Not tested here: mpremote copying to a board
and the HELLO read-back from real hardware (verify_hello is exercised against a HIL board).
"""

import json
import os
import pathlib
import subprocess
import time

import pytest

from picogrid.firmware import config as fw_config
from picogrid.tools import flash

KEY = "11" * 32


def site_with_tcp(tmp_path):
    site = flash.load_site(flash.DEFAULT_SITE)
    site["boards"]["load1"]["link"] = {"type": "tcp", "port": 4242}
    site["boards"]["load1"]["pins"] = {"pwm": 18}
    return site


def write_secrets(tmp_path, boards=None, wifi=True):
    lines = []
    if wifi:
        lines += ["[wifi]", 'ssid = "lab-ap"', 'password = "pw-not-in-git"']
    for name, key in (boards or {}).items():
        lines += ["[boards.%s]" % name, 'key_hex = "%s"' % key]
    p = tmp_path / "secrets.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_board_json_has_identity_link_limits_pins_and_key(tmp_path):
    site = site_with_tcp(tmp_path)
    secrets, path = flash.load_secrets(write_secrets(tmp_path, {"load1": KEY}))
    cfg = flash.board_json(site, "load1", secrets, path)
    assert cfg["board_id"] == 4 and cfg["role"] == "load1" and cfg["priority"] == "critical"
    assert cfg["link"] == {"type": "tcp", "port": 4242}
    assert cfg["wifi"] == {"ssid": "lab-ap", "password": "pw-not-in-git"}
    assert cfg["key_hex"] == KEY
    assert cfg["limits"] == {"power_max_w": 1.0}
    assert cfg["pins"]["pwm"] == 18 and cfg["pins"]["sda"] == flash.DEFAULT_PINS["sda"]
    assert cfg["calibration"]["divider_bus"] == 6.0
    assert cfg["hal"] == "rp2040" and cfg["loop_period_ms"] == 1
    assert fw_config.validate(json.loads(json.dumps(cfg))) == cfg     # what the board will load


def test_serial_board_needs_no_secrets(tmp_path):
    site = flash.load_site(flash.DEFAULT_SITE)
    secrets, path = flash.load_secrets(tmp_path / "absent.toml")
    cfg = flash.board_json(site, "pv", secrets, path)
    assert cfg["link"] == {"type": "serial"} and not cfg.get("key_hex") and "wifi" not in cfg
    assert cfg["board_id"] == 1


def test_missing_key_is_a_clear_error(tmp_path):
    site = site_with_tcp(tmp_path)
    secrets, path = flash.load_secrets(write_secrets(tmp_path, {}))
    with pytest.raises(flash.FlashError, match=r"load1 has a TCP link but no key.*key_hex.*secrets.toml"):
        flash.board_json(site, "load1", secrets, path)
    secrets, path = flash.load_secrets(write_secrets(tmp_path, {"load1": "ab" * 8 + "zz"}))
    with pytest.raises(flash.FlashError, match="not hex"):
        flash.board_json(site, "load1", secrets, path)
    secrets, path = flash.load_secrets(write_secrets(tmp_path, {"load1": KEY}, wifi=False))
    with pytest.raises(flash.FlashError, match="wifi"):
        flash.board_json(site, "load1", secrets, path)
    with pytest.raises(flash.FlashError, match="no board 'toaster'"):
        flash.board_json(site, "toaster", secrets, path)


def test_secrets_path_from_environment(tmp_path, monkeypatch):
    p = write_secrets(tmp_path, {"pv": KEY})
    monkeypatch.setenv("PICOGRID_SECRETS", str(p))
    secrets, path = flash.load_secrets()
    assert path == p and secrets["boards"]["pv"]["key_hex"] == KEY


def test_secrets_folder_is_git_ignored():
    root = pathlib.Path(flash.ROOT)
    run = subprocess.run(["git", "check-ignore", "-q", str(flash.DEFAULT_SECRETS)], cwd=root)
    assert run.returncode == 0, "secrets/ must be in .gitignore"


def test_dry_run_prints_exact_steps_and_hides_secrets(tmp_path, capsys):
    site_path = tmp_path / "site.toml"
    text = flash.DEFAULT_SITE.read_text().replace('[boards.load1]\nrole = "load1"',
                                                  '[boards.load1]\nrole = "load1"\nlink = { type = "tcp", port = 4242 }')
    site_path.write_text(text)
    sec = write_secrets(tmp_path, {"load1": KEY})
    build = tmp_path / "build"
    rc = flash.main(["--port", "/dev/ttyACM0", "--board", "load1", "--site", str(site_path),
                     "--secrets", str(sec), "--build-dir", str(build), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
    mods = [p for p in flash.firmware_modules() if p.name != "main.py"]
    assert len(lines) == len(mods) + 1
    for line, src in zip(lines, mods):
        assert line.endswith("-march=armv6m -o %s %s" % (build / "load1" / (src.stem + ".mpy"), src))
        assert "mpy-cross" in line.split()[0]
    last = lines[-1].split()
    assert "mpremote" in last[0] and last[1:3] == ["connect", "/dev/ttyACM0"]
    assert last[-1] == "reset"
    assert ":main.py" in last and ":board.json" in last and ":protocol.mpy" in last and ":hal_sim.mpy" not in last
    assert KEY not in out and "pw-not-in-git" not in out and "<32-byte key>" in out
    assert not build.exists()                      # a dry run writes nothing


def test_usage_errors(tmp_path, capsys):
    assert flash.main(["--board", "load1", "--dry-run"]) == 2
    assert "--port" in capsys.readouterr().err
    assert flash.main(["--all", "--dry-run"]) == 2
    assert "port" in capsys.readouterr().err


def test_every_deployed_module_compiles_with_mpy_cross(tmp_path):
    tools = flash.find_tools()
    for argv in flash.plan("pv", "/dev/null", {}, tmp_path, tools)[:-1]:
        run = subprocess.run(argv, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        out = pathlib.Path(argv[argv.index("-o") + 1])
        assert out.read_bytes()[:1] == b"M"        # .mpy magic


def test_boards_lists_only_raspberry_pi_devices(capsys):
    rc = flash.boards_main(["--json"])
    picos = json.loads(capsys.readouterr().out)
    assert all(p["vid_pid"].startswith("2e8a:") for p in picos)
    assert rc == (0 if picos else 1)


def test_verify_hello_against_a_hil_board(tmp_path):
    """The read-back step of a flash, against a virtual board on a pseudo-terminal."""
    from picogrid.hil.bench import Bench
    from picogrid.hil.day import load_site

    site = load_site()
    site["boards"] = {"load2": site["boards"]["load2"]}
    bench = Bench(site, tmp_path, time.time(), 1.0, [0.5]).start()
    try:
        cfg = {"board_id": 1, "role": "load2", "name": "load2", "link": {"type": "serial"}}
        assert flash.verify_hello(bench.ports["load2"], cfg) == "0.2.0"
        with pytest.raises(flash.FlashError, match="role"):
            flash.verify_hello(bench.ports["load2"], dict(cfg, role="load3"), timeout_s=3)
    finally:
        bench.stop()


def test_verify_hello_with_the_key_of_a_keyed_serial_board(tmp_path):
    """A serial board provisioned with a key (board_json writes it when the secrets have one)
    authenticates every frame: the read-back asks and reads with that key, and a wrong key
    gets no HELLO."""
    from picogrid.hil.bench import Bench
    from picogrid.hil.day import load_site

    key = bytes(range(32))
    site = load_site()
    site["boards"] = {"load2": site["boards"]["load2"]}
    bench = Bench(site, tmp_path, time.time(), 1.0, [0.5], serial_keys={"load2": key}).start()
    try:
        cfg = {"board_id": 1, "role": "load2", "name": "load2", "link": {"type": "serial"},
               "key_hex": key.hex()}
        assert flash.verify_hello(bench.ports["load2"], cfg) == "0.2.0"
        with pytest.raises(flash.FlashError, match="no HELLO"):
            flash.verify_hello(bench.ports["load2"], dict(cfg, key_hex=bytes(32).hex()), timeout_s=2)
    finally:
        bench.stop()
