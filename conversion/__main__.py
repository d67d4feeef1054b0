"""`python -m conversion SOURCE OUTPUT [options]`: see `conversion.cli`."""

import sys

from conversion.cli import main

if __name__ == "__main__":
    sys.exit(main())
