"""Benchmark runner: ``picogrid bench [NAME ...]`` runs ``picogrid.tools.bench_NAME.main``.

Every benchmark measures its baseline in the same run and prints ratios against it, so a
figure never depends on which machine it ran on (the brief's rule: targets are checked by
benchmarks, never by timed assertions in tests).
"""

import importlib
import pkgutil
import sys

import picogrid.tools as _tools


def available():
    """Names of the benchmark modules ``tools/bench_*.py``."""
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(_tools.__path__)
                  if m.name.startswith("bench_"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    names = [a for a in argv if not a.startswith("-")] or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        sys.stderr.write("unknown benchmark(s) %s; available: %s\n" % (unknown, ", ".join(available())))
        return 2
    status = 0
    for name in names:
        sys.stdout.write("== bench %s ==\n" % name)
        sys.stdout.flush()
        status |= importlib.import_module("picogrid.tools.bench_" + name).main([]) or 0
    return status


if __name__ == "__main__":
    sys.exit(main())
