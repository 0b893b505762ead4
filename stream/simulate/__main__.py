"""``python -m stream.simulate``: the simulate command on its own."""

import sys

from stream.simulate.cli import main

sys.exit(main())
