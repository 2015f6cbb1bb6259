"""`python -m jaxsparse ...` runs the command line."""

import sys

from jaxsparse.cli.main import main

sys.exit(main())
