"""The package's architecture, checked by import-linter (contracts in pyproject.toml): no import
cycles at any depth, the edge's jobs in layers, a firmware that imports nothing of the edge, and a
runtime that never reaches evaluation, training, data loading or pandas."""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
#: where each sub-package of ``picogrid`` lives in the tree (pyproject.toml's package-dir)
PACKAGE_DIRS = ("edge", "models", "web", "hil", "tools", "firmware")


def test_import_contracts_hold(tmp_path):
    """The installed package maps the top-level folders into ``picogrid``; import-linter reads a
    package from one folder, so the check runs on a copy laid out as the import names say."""
    lint = shutil.which("lint-imports", path=str(pathlib.Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports not installed (import-linter is in the test extra)")
    python_only = shutil.ignore_patterns("__pycache__", "*.onnx", "*.json", "*.png", "*.md", "*.toml", "*.html",
                                         "*.js", "*.css", "static", "templates", "artifacts")
    shutil.copytree(REPO / "picogrid", tmp_path / "picogrid", ignore=python_only)
    for d in PACKAGE_DIRS:
        shutil.copytree(REPO / d, tmp_path / "picogrid" / d, ignore=python_only)
    out = subprocess.run([lint, str(REPO / "pyproject.toml"), "--no-cache"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout and "Contracts: 4 kept, 0 broken." in out.stdout, out.stdout[-2000:]


def test_every_document_the_code_cites_exists():
    """Issue 28 point 3: a ``docs/….md`` or ``….md`` named in code is a file of the repository
    (another project's document is named as that project's, e.g. "EMHASS's docs/lpems.md")."""
    root = pathlib.Path(__file__).resolve().parent.parent
    cited = re.compile(r"(?<!'s )(?<![\w/.])((?:[\w\-]+/)*[\w\-]+\.md)\b")
    missing = []
    for folder in ("edge", "hil", "web", "models", "tools", "firmware", "picogrid", "tests"):
        for path in (root / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                for name in cited.findall(line):
                    candidates = [root / name, path.parent / name, root / "docs" / name,
                                  root / "firmware" / name, root / "models" / name, root / "web" / name]
                    if not any(c.exists() for c in candidates):
                        missing.append("%s:%d %s" % (path.relative_to(root), n, name))
    assert not missing, "documents cited but not in the repository:\n" + "\n".join(missing)
