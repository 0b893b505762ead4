"""`python -m stream ...` is `qris-guard ...`."""

import sys

from .cli import main

sys.exit(main())
