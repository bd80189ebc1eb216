"""What every `tflm` subcommand shares: its parser's shape and its flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator


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


def stdin_lines() -> Iterator[str]:
    """Yields the lines of standard input as text, without their newline,
    reading one at a time (the input may be larger than memory).

    Raises:
        InputError: a line that is not UTF-8 text, or that holds a NUL
            byte (binary data or UTF-16, which typed text never holds).
    """
    for number, line in enumerate(sys.stdin.buffer, 1):
        yield text_line(line, number)


def text_line(line: bytes, number: int) -> str:
    r"""Line `number` of standard input, decoded; see `stdin_lines`.

    Example:
    >>> text_line(b"caf\xc3\xa9\n", 1)
    'café'
    """
    from tflm.errors import InputError

    where = f"standard input line {number:,}"
    if b"\0" in line:
        raise InputError(
            f"{where} holds a NUL byte: it is binary data or UTF-16, not "
            "UTF-8 text; convert it, e.g. with iconv -f UTF-16 -t UTF-8."
        )
    try:
        return line.removesuffix(b"\n").decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{where} is not UTF-8 text ({err.reason} at byte "
            f"{err.start + 1}); convert it, e.g. with iconv -t UTF-8."
        ) from None


def size_mb(path: str) -> float:
    """Total size of the files under `path`, in MB."""
    import os

    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6
