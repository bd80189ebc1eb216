"""`python -m tflm` runs the `tflm` command."""

import sys

from tflm.cli import main

if __name__ == "__main__":
    sys.exit(main())
