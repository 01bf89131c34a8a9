"""An installed (non-editable) picogrid carries every data file the code reads at run time.

The tests run on the editable install, which reads the source tree and so cannot see a file
that ``[tool.setuptools.package-data]`` leaves out: the site forecasters once were (the glob
``artifacts/*.onnx`` does not reach ``artifacts/site/``), and an installed edge then ran the
site profile on seasonal naive. This checks the patterns the way setuptools expands them
(``glob`` relative to each package's directory, ``*`` not crossing ``/``).
"""

import glob
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> files (globs, recursive) its code opens at run time
NEEDED = {
    "picogrid.models": ["artifacts/**/*.onnx", "artifacts/**/*.json"],
    "picogrid.edge": ["sites/*.toml"],
    "picogrid.web": ["templates/**/*", "static/**/*", "openapi.json"],
    "picogrid.firmware": ["*.py", "*.json"],
}


def test_package_data_covers_every_runtime_file():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    missing = []
    for package, needed in NEEDED.items():
        pkg_dir = ROOT / cfg["package-dir"][package]
        shipped = {Path(p) for pat in cfg["package-data"].get(package, [])
                   for p in glob.glob(pat, root_dir=pkg_dir, recursive=True)}
        wanted = {Path(p) for pat in needed for p in glob.glob(pat, root_dir=pkg_dir, recursive=True)
                  if (pkg_dir / p).is_file() and "__pycache__" not in p}
        assert wanted, (package, needed)          # the check must see the files it guards
        missing += [f"{package}: {p}" for p in sorted(wanted - shipped)]
    assert not missing, missing


def test_plain_install_runs_the_edge_without_extras(tmp_path):
    """``pip install .`` with no extras, in a fresh virtualenv: the edge's modules import, the
    shipped default solver plans (``picogrid plan``), and neither pandas nor the research
    harness is installed or needed."""
    import subprocess
    import sys

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                             capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    probe = ("import sys, importlib.util\n"
             "import picogrid.edge.control.runner, picogrid.edge.control.service, picogrid.edge.sources.feedsource\n"
             "import picogrid.edge.forecasting.forecast, picogrid.web\n"
             "assert importlib.util.find_spec('pandas') is None, 'pandas was installed'\n"
             "assert 'picogrid.edge.evaluation' not in sys.modules\n"
             "from picogrid.edge.forecasting.forecast import Forecaster\n"
             "print('forecaster', Forecaster().source if hasattr(Forecaster(), 'source') else 'ok')\n")
    run = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    plan = subprocess.run([str(venv / "bin" / "picogrid"), "plan", "--site", str(ROOT / "edge/sites/lab.toml")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
    assert "status solved_exact" in plan.stdout and "load1" in plan.stdout, plan.stdout
