"""`python -m nano_tokenizer`: the nano-tokenizer command line."""

import sys

from .cli import main

sys.exit(main())
