"""``python -m picogrid``: the same as the ``picogrid`` command."""

import sys

from picogrid.cli import main

sys.exit(main())
