"""The ``picogrid`` console command."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="picogrid")
    parser.add_subparsers(dest="command")
    args = parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
