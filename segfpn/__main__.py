"""``python -m segfpn``: the ``segfpn`` command line."""

import sys

from segfpn.cli import main

sys.exit(main())
