"""``python -m walnet``: the command line."""
import sys

from walnet.cli import main

sys.exit(main())
