"""Stopping a run whose loss or weights stop being finite.

A too-high learning rate (or bad data) can make the loss NaN or infinite,
after which every update writes NaN into the weights.
`tflm.train.callbacks.NonFiniteLossGuard` stops `fit` at the first such
step, before the checkpoint callback runs, and `check_finite` refuses to
checkpoint weights or optimizer moments that are no longer finite (an
update can overflow after a finite loss). So a checkpoint never holds NaN;
the model directory keeps the last one written before.
"""

from __future__ import annotations

import keras
import numpy as np

from tflm import errors


class TrainingDiverged(errors.InputError):
    """The loss or the weights became NaN or infinite at `step`.

    Args:
        step: the step (1-based update) where it was seen.
        what: what is not finite, e.g. `"the loss is nan"`.
        source_step: the step whose weights gave it: `step - 1` for a loss
            (computed before the update), `step` for the weights.
    """

    def __init__(self, step: int, what: str, source_step: int):
        super().__init__(f"Training diverged at step {step}: {what}.")
        self.step = step
        self.what = what
        self.source_step = source_step


def non_finite(variables) -> list[str]:
    """Paths of the floating-point `variables` holding NaN or infinity."""
    bad = []
    for variable in variables:
        if not keras.backend.is_float_dtype(variable.dtype):
            continue
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable))):
            bad.append(variable.path)
    return bad


def check_finite(step: int, model, optimizer) -> None:
    """Raises `TrainingDiverged` if the state to checkpoint is not finite.

    Args:
        step: the step about to be checkpointed.
        model: its weights are checked.
        optimizer: its variables (moments, loss scale) are checked.
    """
    bad = non_finite(list(model.weights) + list(optimizer.variables))
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise TrainingDiverged(
            step, f"{len(bad)} variables are not finite ({shown})", step
        )


def message(error: TrainingDiverged, directory: str, kept_step: int, config):
    """The one-line explanation the user sees, with the way out."""
    kept = (
        f"{error} Nothing after step {kept_step} was saved: {directory} "
        f"keeps the checkpoint of step {kept_step}."
    )
    lower = (
        f"Lower --learning-rate (now {config.learning_rate!r}), or raise "
        "--warmup-steps or lower --clip-norm"
    )
    if error.source_step <= kept_step:
        # The kept weights themselves gave the non-finite loss.
        return (
            f"{kept} That loss came from those weights, so resuming would "
            f"diverge again: {lower}, and name a new --out to start over."
        )
    return (
        f"{kept} {lower}, and run again to resume from step {kept_step} "
        "(or name a new --out to start over)."
    )
