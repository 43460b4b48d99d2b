"""``python -m bitdance_rt ...``: the ``bitdance-rt`` command line."""

import sys

from .cli import main

sys.exit(main())
