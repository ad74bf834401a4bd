"""`python -m baldflow.cli`: the `baldflow` command."""

import sys

from baldflow.cli import main

sys.exit(main())
