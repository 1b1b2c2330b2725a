"""``python -m p2preg``: the same as the ``p2preg`` command."""

import sys

from p2preg.cli import main

sys.exit(main())
