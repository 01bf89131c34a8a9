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
