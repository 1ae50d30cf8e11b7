"""`python -m ptycho_callbacks` runs the `ptycho-callbacks` command (`cli.main`)."""

import sys

from .cli import main

sys.exit(main())
