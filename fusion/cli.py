"""The ``fusion`` command line: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys

import fusion


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fusion", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fusion {fusion.__version__}")
    parser.parse_args(argv)
    print(f"fusion {fusion.__version__}: kernels conv_transpose, conv, batch_norm, scale (1-D to 3-D)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
