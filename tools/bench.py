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
    """``picogrid bench [NAME ...] [-- ]OPTIONS``: options after one name go to that benchmark.

    ``picogrid bench mpc --ticks 50 --horizons 288`` runs ``bench_mpc.main(['--ticks', '50',
    '--horizons', '288'])``; options with several names are refused (they differ per benchmark).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    first_opt = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:first_opt], [a for a in argv[first_opt:] if a != "--"]
    if options and len(names) != 1:
        sys.stderr.write("options go to one benchmark: picogrid bench NAME [OPTIONS]\n")
        return 2
    names = names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        sys.stderr.write("unknown benchmark(s) %s; available: %s\n" % (unknown, ", ".join(available())))
        return 2
    status = 0
    for name in names:
        sys.stdout.write("== bench %s ==\n" % name)
        sys.stdout.flush()
        status |= importlib.import_module("picogrid.tools.bench_" + name).main(options) or 0
    return status


if __name__ == "__main__":
    sys.exit(main())
