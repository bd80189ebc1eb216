"""Callbacks for `LMTrainer.fit`: progress metrics, logs, checkpoints.

`fit` runs in "epochs" of `steps_per_epoch` updates (the interval between
checkpoints and validations), so the absolute step after a batch is
`epoch * steps_per_epoch + batch + 1`; with `initial_epoch` this holds
after a resume too.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Callable

import keras
import tensorflow as tf

from tflm.train import divergence
from tflm.train import progress as progress_lib


def epoch_length(
    checkpoint_every: int, validate_every: int, start: int, total: int
) -> int:
    """Steps per Keras epoch: a divisor of the checkpoint and validation
    intervals (`0`: none) and of the step a run resumes from."""
    intervals = [checkpoint_every, validate_every, start]
    length = math.gcd(*[v for v in intervals if v]) or total
    return min(length, total)


class _StepCallback(keras.callbacks.Callback):
    def __init__(self, steps_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def step(self, batch: int) -> int:
        return self.epoch * self.steps_per_epoch + batch + 1


# TensorBoard's scalar plugin metadata, so that `tf.summary.write` (core
# TensorFlow) makes the events `tf.summary.scalar` would without needing the
# tensorboard package.
_SCALAR_METADATA = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def write_scalar(name: str, value: float) -> None:
    """Writes a TensorBoard scalar to the default summary writer."""
    tf.summary.write(
        name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA
    )


def _perplexity(loss: float) -> float:
    return math.exp(min(float(loss), 50.0))


class NonFiniteLossGuard(_StepCallback):
    """Raises `divergence.TrainingDiverged` after a non-finite step loss.

    Put it first in the callback list: Keras calls callbacks in order, so
    the ones after it (checkpoints, logs) never see the bad step.
    """

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("step_loss", logs.get("loss"))
        if loss is not None and not math.isfinite(float(loss)):
            step = self.step(batch)
            raise divergence.TrainingDiverged(
                step, f"the loss is {float(loss)}", step - 1
            )


class ProgressLogger(_StepCallback):
    """Adds perplexity and tokens/s to the logs, and writes them down.

    After each step the logs get `perplexity` (`exp(loss)`, no extra pass
    over the logits) and `tokens/s` (over the last `window` steps, wall
    time); `step_loss` is taken out of the logs and written, with the
    learning rate, to a JSON-lines file, to TensorBoard and to `bar`.

    Args:
        tokens_per_step: tokens in one global batch.
        steps_per_epoch: see the module docstring.
        log_path: JSON-lines file to append to, or `None`.
        tensorboard_dir: TensorBoard log folder, or `None`.
        log_every: steps between TensorBoard points.
        window: steps the tokens/s average spans.
        bar: the progress line to update, or `None`.
    """

    def __init__(
        self,
        *,
        tokens_per_step: int,
        steps_per_epoch: int,
        log_path: str | None = None,
        tensorboard_dir: str | None = None,
        log_every: int = 10,
        window: int = 20,
        bar: progress_lib.ProgressBar | None = None,
    ):
        super().__init__(steps_per_epoch)
        self.bar = bar
        self.tokens_per_step = tokens_per_step
        self.log_path = log_path
        self.tensorboard_dir = tensorboard_dir
        self.log_every = log_every
        self.times: collections.deque = collections.deque(maxlen=window + 1)
        self.writer = None
        self.warm = False
        self.rate = 0.0
        self.last_step = 0
        self.validated_step = None
        self.validation_loss = None

    def on_train_begin(self, logs=None):
        if self.tensorboard_dir:
            self.writer = tf.summary.create_file_writer(self.tensorboard_dir)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.times.clear()  # Leaves validation and checkpoint time out.

    def on_train_batch_begin(self, batch, logs=None):
        if not self.times:
            self.times.append(time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        self.times.append(time.perf_counter())
        seconds = self.times[-1] - self.times[0]
        rate = self.tokens_per_step * (len(self.times) - 1) / max(seconds, 1e-9)
        self.rate = rate
        if not self.warm:
            # The first step compiles: keep it out of later rates.
            self.warm = True
            self.times.popleft()
        step = self.last_step = self.step(batch)
        step_loss = float(logs.pop("step_loss", logs.get("loss", math.nan)))
        if "loss" in logs:
            logs["perplexity"] = _perplexity(logs["loss"])
        logs["tokens/s"] = rate
        record = {
            "step": step,
            "loss": step_loss,
            "learning_rate": float(logs.get("learning_rate", math.nan)),
            "tokens_per_second": rate,
        }
        self.write(record, tensorboard=step % self.log_every == 0)
        if self.bar is not None:
            self.bar.update(step, step_loss, rate)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.pop("step_loss", None)
        if "loss" in logs:
            logs["perplexity"] = _perplexity(logs["loss"])
        logs["tokens/s"] = self.rate
        if "val_loss" in logs:
            logs["val_perplexity"] = _perplexity(logs["val_loss"])
            self.log_validation(self.last_step, float(logs["val_loss"]))
        if self.bar is not None:
            loss = logs.get("val_loss")
            loss = None if loss is None else float(loss)
            self.bar.end_chunk(loss)

    def log_validation(self, step: int, loss: float) -> None:
        """Records a validation loss measured at `step`."""
        self.validated_step = step
        self.validation_loss = loss
        record = {
            "step": step,
            "val_loss": loss,
            "val_perplexity": _perplexity(loss),
        }
        self.write(record, tensorboard=True)

    def write(self, record: dict, tensorboard: bool) -> None:
        if self.log_path:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if tensorboard and self.writer is not None:
            with self.writer.as_default(step=record["step"]):
                for name, value in record.items():
                    if name == "loss":
                        write_scalar("perplexity", _perplexity(value))
                    if name != "step":
                        write_scalar(name, value)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()


class Checkpointer(_StepCallback):
    """Calls `save(step)` every `every` steps and when training ends.

    A checkpoint step always ends a Keras epoch (see `epoch_length`), and
    the checkpoint is written at the epoch's end, after its validation, so
    that it holds what that validation found.

    Args:
        save: function writing a checkpoint of the current step.
        every: steps between checkpoints; `0` for the end only.
        steps_per_epoch: see the module docstring.
        initial_step: the step training starts from.
        at_end: also save when training ends (off when the caller writes
            the final checkpoint itself).
    """

    def __init__(
        self,
        save: Callable[[int], None],
        *,
        every: int,
        steps_per_epoch: int,
        initial_step: int,
        at_end: bool = True,
    ):
        super().__init__(steps_per_epoch)
        self.save = save
        self.every = every
        self.at_end = at_end
        self.saved_step = initial_step
        self.last_step = initial_step

    def on_train_batch_end(self, batch, logs=None):
        self.last_step = self.step(batch)

    def on_epoch_end(self, epoch, logs=None):
        step = self.last_step
        if self.every and step % self.every == 0 and step != self.saved_step:
            self.save(step)
            self.saved_step = step

    def on_train_end(self, logs=None):
        if self.at_end and self.last_step != self.saved_step:
            self.save(self.last_step)
            self.saved_step = self.last_step


class StopAtStep(_StepCallback):
    """Stops `fit` after step `total_steps` (mid-epoch if need be)."""

    def __init__(self, total_steps: int, steps_per_epoch: int):
        super().__init__(steps_per_epoch)
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if self.step(batch) >= self.total_steps:
            self.model.stop_training = True
