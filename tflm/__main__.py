"""`python -m tflm` runs the `tflm` command."""

import sys

from tflm.cli import main

sys.exit(main())
