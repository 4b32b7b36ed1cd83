"""`python -m compiler`: the `mailcfg` command line."""

import sys

from compiler.cli import console_main

sys.exit(console_main())
