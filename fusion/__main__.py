"""``python -m fusion``: the ``fusion`` command line."""

import sys

from fusion.cli import main

sys.exit(main())
