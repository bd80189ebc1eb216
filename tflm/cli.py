"""The `tflm` command: a thin layer that parses flags and calls tflm modules.

Each subcommand is a `_add_<name>(subparsers)` function that registers its
parser and sets `func`; heavy imports happen inside the handlers so that
`tflm --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

logger = logging.getLogger("tflm")


class CLIError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def _add_version(subparsers) -> None:
    parser = subparsers.add_parser("version", help="print versions and exit")
    parser.set_defaults(func=_run_version)


def _run_version(args: argparse.Namespace) -> int:
    import keras
    import tensorflow as tf

    import tflm

    print(f"tflm {tflm.__version__}")
    print(f"tensorflow {tf.__version__}")
    print(f"keras {keras.__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tflm",
        description="Train, run and serve GPT-style language models.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show debug logs"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_version,):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as err:
        print(f"tflm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
