"""What every `tflm` subcommand shares: its parser's shape and its flags."""

from __future__ import annotations

import argparse


def _shared_flags() -> argparse.ArgumentParser:
    """`-v` and `--debug`, accepted before or after the subcommand."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show debug logs, TensorFlow's included",
    )
    shared.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error",
    )
    return shared


SHARED = _shared_flags()


def add_command(
    subparsers,
    name: str,
    *,
    help: str,
    example: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Registers subcommand `name`; its `--help` ends with `example`."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        epilog="example:\n  " + example.strip().replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[SHARED],
    )


def sampling_flags(parser: argparse.ArgumentParser) -> None:
    """The sampling controls of `tflm generate` and `tflm quickstart`."""
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="default: 64, or the context - 1; capped at the room the prompt "
        "leaves in the context (the prompt is kept whole)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 is greedy (default)"
    )
    parser.add_argument("--top-k", type=int, default=0, help="0 is off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 is off")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed: the same seed and prompt give the same text "
        "(default: 0)",
    )


def size_mb(path: str) -> float:
    """Total size of the files under `path`, in MB."""
    import os

    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6
