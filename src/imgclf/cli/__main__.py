"""``python -m imgclf.cli``: the command line (as the ``imgclf`` script)."""

import sys

from imgclf.cli import main

sys.exit(main())
