"""``python -m segfpn.training CONFIG [--resume]``: the ``segfpn train`` command on its own."""

import sys

from segfpn.training.cli import main

sys.exit(main())
