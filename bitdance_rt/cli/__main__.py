"""``python -m bitdance_rt.cli ...`` (the same as ``python -m bitdance_rt ...``)."""

import sys

from . import main

sys.exit(main())
