"""Disk space for a run's checkpoints, checked before each one is written.

A checkpoint is a whole model directory written beside the last one (see
`tflm.atomic`): the weights (none for a LoRA fine-tune that keeps its base
in its parent model), the optimizer's state, the best trainable weights when
a run keeps them, LoRA adapters and the tokenizer. Keras writes the weights
with HDF5, which crashes the process when the disk fills under it, so the
space a checkpoint needs is estimated from the variables and checked first;
a disk too full stops the run with one line that says how much space is
needed and which checkpoint was kept.
"""

from __future__ import annotations

import os

import tensorflow as tf

from tflm import atomic
from tflm import errors
from tflm.models import model_dir
from tflm.train import state as state_lib

# Per stored array: HDF5's dataset headers (about 2.5 KB) and npz's.
_PER_H5_ARRAY = 3072
_PER_NPZ_ARRAY = 512
# config.json, state.json, rng.npz and the files' own headers.
_FIXED = 1 << 16
# A tokenizer not yet written anywhere (a large SentencePiece model).
_TOKENIZER = 1 << 21


def _stored_bytes(variables, per_array: int = _PER_NPZ_ARRAY) -> int:
    total = 0
    for variable in variables:
        count = 1
        for size in variable.shape:
            count *= int(size)
        total += count * tf.as_dtype(variable.dtype).size + per_array
    return total


def checkpoint_bytes(
    model,
    optimizer,
    *,
    weights: bool,
    best: bool,
    lora: bool,
    tokenizer_dir: str | None,
) -> int:
    """About how many bytes one checkpoint of a run takes (a little more).

    Args:
        model: the `CausalLM` being trained.
        optimizer: its built optimizer (state for the trainable variables).
        weights: whether the checkpoint holds the model's weights
            (`model.weights.h5`); a LoRA fine-tune of a model directory
            keeps its base there, by reference, and writes none.
        best: whether the checkpoint holds the best weights seen
            (`train/best.npz`: the trainable variables).
        lora: whether the run trains LoRA adapters (stored twice:
            `adapters.npz` and in `train/`).
        tokenizer_dir: a written copy of the run's tokenizer, to measure;
            `None` allows 2 MiB.
    """
    trainable = _stored_bytes(model.trainable_weights)
    total = _stored_bytes(model.weights, _PER_H5_ARRAY) if weights else 0
    total += _stored_bytes(optimizer.variables)
    total += trainable if best else 0
    total += 2 * trainable if lora else 0
    if tokenizer_dir is not None and os.path.isdir(tokenizer_dir):
        total += atomic.tree_size(tokenizer_dir)
    else:
        total += _TOKENIZER
    return total + _FIXED


def kept_step(directory: str) -> int | None:
    """The step of the checkpoint `directory` holds, if any."""
    if not model_dir.is_model_dir(directory):
        return None
    try:
        return state_lib.read(directory).step
    except errors.InputError:
        return None


def full_disk(
    out: str, step: int | None, needed: int | None
) -> atomic.NoSpaceError:
    """The one line for a run stopped by a full disk: how much space the
    checkpoint of `step` needs (`needed` bytes, if known), and what `out`
    kept for the rerun to resume from.

    A checkpoint is written beside the last one, which it then replaces:
    the run goes on when `needed` bytes are free beside a checkpoint as
    large as the new one, so the space asked for covers that growth.
    """
    directory = os.path.dirname(out)
    free = atomic.free_bytes(directory)
    what = "the run" if step is None else f"the checkpoint of step {step}"
    if needed is None:
        size, short = "it needs more than is free", 0
    else:
        size = (
            f"each checkpoint needs about {atomic.megabytes(needed)} MB free "
            f"beside the last one, and {atomic.megabytes(free)} MB are free"
        )
        short = needed - free + max(needed - _checkpoint_size(out), 0)
    action = (
        f"Free at least {atomic.megabytes(short)} MB"
        if short > 0
        else "Free more space"
    )
    kept = kept_step(out)
    if kept is None:
        after = "rerun the same command to start the run (nothing was kept)"
    else:
        after = (
            f"rerun the same command: it resumes from step {kept}, the "
            f"checkpoint {out} keeps"
        )
    return atomic.NoSpaceError(
        directory,
        f"No space left on {directory} for {what}: {size}. {action} and "
        f"{after}.",
    )


def _checkpoint_size(out: str) -> int:
    """Bytes of the checkpoint in `out` (what a new one replaces)."""
    return sum(
        atomic.tree_size(os.path.join(out, entry))
        if os.path.isdir(os.path.join(out, entry))
        else _file_size(os.path.join(out, entry))
        for entry in model_dir.MANAGED
    )


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
