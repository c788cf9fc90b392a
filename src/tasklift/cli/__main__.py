"""``python -m tasklift.cli``."""

import sys

from tasklift.cli import main

sys.exit(main())
