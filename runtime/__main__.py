"""`python -m runtime`: same as `mailcfg-agent`."""

import sys

from runtime.cli import main

sys.exit(main())
