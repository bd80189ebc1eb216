"""The `tflm` command: parse flags, run one subcommand, map its outcome to
an exit code.

Exit codes: 0 on success; 2 on bad usage or bad input (`InputError`, one
line that names the problem and the fix); 1 on an unexpected error, which is
a bug (a one-line summary, and the traceback with `--debug`); 130 when
interrupted; 141 when the reader of standard output went away.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from tflm.cli import chat
from tflm.cli import data
from tflm.cli import evaluate
from tflm.cli import export
from tflm.cli import finetune
from tflm.cli import generate
from tflm.cli import importer
from tflm.cli import quickstart
from tflm.cli import quiet
from tflm.cli import tokenizer
from tflm.cli import train
from tflm.cli import version

COMMANDS = (
    quickstart,
    tokenizer,
    data,
    train,
    finetune,
    evaluate,
    generate,
    chat,
    export,
    importer,
    version,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tflm",
        description="Train, run and serve GPT-style language models.",
        epilog="example:\n  tflm quickstart",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show debug logs"
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(subparsers)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `tflm generate ... | head`: the reader is gone; stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _report(args: argparse.Namespace, err: BaseException) -> int:
    from tflm.errors import InputError

    sub = getattr(args, "tokenizer_command", None) or getattr(
        args, "data_command", None
    )
    name = " ".join(["tflm", args.command, sub or ""]).strip()
    if args.debug:
        traceback.print_exception(err)
    if isinstance(err, InputError):
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    summary = str(err).strip().splitlines()
    summary = f": {summary[0]}" if summary else ""
    print(
        f"{name}: internal error: {type(err).__name__}{summary}\n"
        "This is a bug in tflm, not in your input. Rerun with --debug for "
        "the traceback, and report it.",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-v", "--verbose") for arg in argv):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return _main(argv)
    quiet.quiet_python_logging()
    with quiet.QuietStderr():
        return _main(argv)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        force=True,
    )
    if not args.verbose:
        quiet.quiet_python_logging()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return _run(args)
    except KeyboardInterrupt as err:
        # A command may say what it kept and how to go on.
        print(str(err) or "interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error gets a code
        return _report(args, err)
