"""Start a bench process that dies with its launcher: ``python -m picogrid.hil.child CMD ...``.

Sets Linux's PR_SET_PDEATHSIG (SIGTERM when the parent dies), which survives ``exec``, then
execs ``CMD``. Done in a child of its own rather than in ``subprocess``'s ``preexec_fn``,
which is unsafe while the launcher has other threads running (the Python docs' warning).
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv):
    if not argv:
        sys.stderr.write("usage: python -m picogrid.hil.child COMMAND [ARG ...]\n")
        return 2
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass    # not Linux: Bench.stop() still ends the process on a normal exit
    if os.getppid() == 1:    # the launcher died before the signal was armed
        return 1
    os.execv(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
