"""`python -m nano_format ...` runs the nano-format command line."""

import sys

from .cli import main

sys.exit(main())
