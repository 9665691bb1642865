"""``python -m dtms.cli``."""

import sys

from dtms.cli import main

sys.exit(main())
