"""``python -m dualwrite``: the same as the ``dualwrite`` command."""

import sys

from dualwrite.cli import main

sys.exit(main())
