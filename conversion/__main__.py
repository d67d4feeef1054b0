"""`python -m keras_deit.conversion SOURCE OUTPUT [options]`: see `keras_deit.conversion.cli`."""

import sys

from keras_deit.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main())
