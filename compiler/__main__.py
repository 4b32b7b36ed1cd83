"""`python -m compiler`: the `mailcfg` command line."""

import sys

from compiler.cli import main

sys.exit(main())
