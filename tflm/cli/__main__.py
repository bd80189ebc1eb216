"""`python -m tflm.cli` runs the `tflm` command, like `python -m tflm`."""

import sys

from tflm.cli import main

if __name__ == "__main__":
    sys.exit(main())
