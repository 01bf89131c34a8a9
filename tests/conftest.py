"""Shared fixtures: paths and a runner for scripts under the real MicroPython interpreter."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"


def run_micropython(script, *args, timeout=60):
    """Run ``script`` under the MicroPython unix port with the firmware on its path.

    Returns the completed process; raises AssertionError with stderr if it failed.
    """
    from picogrid.hil.bench import micropython_command

    env = dict(os.environ, MICROPYPATH=".frozen:" + str(FIRMWARE))
    run = subprocess.run([micropython_command(), str(script), *map(str, args)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture
def firmware_path(monkeypatch):
    """Make the firmware's flat modules importable under CPython, as they are on a board."""
    monkeypatch.syspath_prepend(str(FIRMWARE))
    return FIRMWARE
