"""Shared by the importers: chunked copies into variables, config checks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.models import presets as presets_lib

logger = logging.getLogger(__name__)

CHUNK_BYTES = 32 * 2**20


def row_chunks(
    read, rows: int, row_bytes: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields `(start, read(start, stop))` over `rows`, `CHUNK_BYTES` each."""
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, max(rows, 1), step):
        yield start, read(start, min(rows, start + step))


def assign(
    variable,
    shape: Iterable[int],
    chunks: Iterable[tuple[int, np.ndarray]],
    source: str,
    name: str,
) -> None:
    """Copies a tensor, given as row chunks, into `variable`.

    Args:
        variable: a float Keras variable.
        shape: the tensor's shape in the checkpoint.
        chunks: `(first row, rows)` pairs covering the tensor.
        source: the checkpoint file, for errors.
        name: the tensor's name in the checkpoint, for errors.

    Raises:
        ValueError: naming `source` and `name`, when the shapes differ.
    """
    shape, expected = list(shape), list(variable.shape)
    if shape != expected:
        raise errors.InputError(
            f"{source}: tensor {name!r} has shape {shape}, but the "
            f"architecture in the checkpoint's config needs {expected}."
        )
    target = variable.value
    for start, rows in chunks:
        rows = np.asarray(rows, dtype=variable.dtype)
        if not isinstance(target, tf.Variable) or (
            start == 0 and list(rows.shape) == expected
        ):
            variable.assign(rows)
            continue
        # Not `target[a:b].assign`: its read of the variable would make the
        # next write copy the whole buffer.
        stop = start + rows.shape[0]
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=target.handle,
            begin=[start] + [0] * (rows.ndim - 1),
            end=[stop, *expected[1:]],
            strides=[1] * rows.ndim,
            value=rows,
        )


def matching_preset(args: dict) -> str | None:
    """The `gpt2-*` preset whose architecture equals `args`, if any."""
    for name, preset in presets_lib.PRESETS.items():
        if name.startswith("gpt2") and all(
            args.get(key) == value for key, value in preset.items()
        ):
            return name
    return None


def log_architecture(args: dict, source: str) -> None:
    preset = matching_preset(args)
    if preset:
        logger.info("%s: the architecture of preset %s.", source, preset)
    else:
        logger.info("%s: a GPT-2 architecture of no preset: %s", source, args)


def check_vocabulary(tokenizer, vocabulary_size: int, source: str) -> None:
    if tokenizer.vocabulary_size > vocabulary_size:
        raise errors.InputError(
            f"{source}: the model has {vocabulary_size} token ids but the "
            f"tokenizer has {tokenizer.vocabulary_size}."
        )
