"""``python -m imgclf`` (and ``torchrun -m imgclf``): the command line."""

import sys

from imgclf.cli import main

sys.exit(main())
