"""The `tflm` command line: one module per subcommand, each thin.

Every module registers its parser with `add(subparsers)` and runs with
`run(args)`; the work itself lives in the library.
"""

from tflm.cli.app import build_parser
from tflm.cli.app import main

__all__ = ["build_parser", "main"]
