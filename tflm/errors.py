"""The error types tflm raises on purpose.

`InputError` marks bad input or bad usage, raised where it is detected: the
message names the problem and the fix, and the CLI prints it as one line and
exits 2. It subclasses `ValueError`, so code that catches `ValueError` (the
Keras convention for bad arguments) keeps working. Any other exception that
escapes a command is a bug: the CLI exits 1 and `--debug` shows the
traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input or usage; the message says what is wrong and how to fix it.

    Example:
    >>> str(InputError("--steps must be >= 1. Received: steps=0"))
    '--steps must be >= 1. Received: steps=0'
    """


def shorten(value: str, keep: int = 40) -> str:
    """`value` for an error message: its repr, cut after `keep` characters
    with its length added, so a long input is never echoed whole.

    Example:
    >>> shorten("x" * 100_000)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (100,000 characters)"
    >>> shorten("\\n\\n")
    "'\\\\n\\\\n'"
    """
    if len(value) <= keep:
        return repr(value)
    return f"{value[:keep]!r}… ({len(value):,} characters)"
