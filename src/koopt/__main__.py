"""``python -m koopt``: the ``koopt`` command."""

import sys

from koopt.cli import main

sys.exit(main())
