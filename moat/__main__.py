"""`python -m moat` is the `moat` command."""

import sys

from moat.cli import main

sys.exit(main())
