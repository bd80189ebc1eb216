"""Keeping the best weights seen, and early stopping on validation loss.

Small task sets overfit fast, so a fine-tuning run validates on held-out
examples and its result is the best weights seen, not the last. The best
weights travel in every checkpoint (`train/best.npz`), so a resumed run
still knows them. Only trainable variables are kept (the others never
change while training): for a LoRA run, the adapters.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import keras
import numpy as np

from tflm import errors
from tflm.models import model_dir

logger = logging.getLogger(__name__)

BEST_FILE = f"{model_dir.TRAIN_DIR}/best.npz"


class BestKeeper(keras.callbacks.Callback):
    """Remembers the weights of the lowest validation loss; stops early.

    Args:
        lm: the model whose trainable weights are kept.
        current_step: returns the step just trained.
        patience: stop after this many validations without a lower loss;
            `None` never stops.
    """

    def __init__(
        self,
        lm,
        current_step: Callable[[], int],
        patience: int | None = None,
    ):
        super().__init__()
        self.lm = lm
        self.current_step = current_step
        self.patience = patience
        self.best_step: int | None = None
        self.best_loss = math.inf
        self.bad_validations = 0
        self.stopped = False
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            self.observe(self.current_step(), float(logs["val_loss"]))
            if self.stopped:
                self.model.stop_training = True

    def observe(self, step: int, loss: float) -> None:
        """Takes the validation loss measured at `step`."""
        if loss < self.best_loss:
            self.best_step, self.best_loss = step, loss
            self.bad_validations = 0
            self.weights = [np.array(v) for v in self.lm.trainable_weights]
            return
        self.bad_validations += 1
        if self.patience and self.bad_validations >= self.patience:
            logger.info(
                "Stopping early at step %d: no lower validation loss for %d "
                "validations (best %.4f at step %d).",
                step,
                self.bad_validations,
                self.best_loss,
                self.best_step,
            )
            self.stopped = True

    def use_best(self) -> None:
        """Sets the model's weights to the best seen (if any)."""
        if self.weights is not None:
            for variable, value in zip(
                self.lm.trainable_weights, self.weights, strict=True
            ):
                variable.assign(value)

    def state(self) -> dict:
        """The JSON-safe part of what a checkpoint keeps."""
        loss = None if math.isinf(self.best_loss) else self.best_loss
        return {
            "best_step": self.best_step,
            "best_loss": loss,
            "bad_validations": self.bad_validations,
            "stopped": self.stopped,
        }

    def write(self, path: str) -> None:
        """Writes the best weights (an `extra` file of `model_dir.save`)."""
        with open(path, "wb") as f:
            np.savez(f, *(self.weights or []))

    def restore(self, directory: str, state: dict) -> None:
        """Takes back what `state` and `write` kept, when resuming."""
        self.best_step = state.get("best_step")
        loss = state.get("best_loss")
        self.best_loss = math.inf if loss is None else float(loss)
        self.bad_validations = int(state.get("bad_validations", 0))
        if self.best_step is None:
            return
        path = os.path.join(directory, BEST_FILE)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
        except (OSError, ValueError, KeyError) as err:
            raise errors.InputError(
                f"{path} is missing or corrupt ({err}); train into a new --out."
            ) from None
        variables = self.lm.trainable_weights
        if [a.shape for a in arrays] != [tuple(v.shape) for v in variables]:
            raise errors.InputError(
                f"{path} holds {len(arrays)} arrays; the model trains "
                f"{len(variables)} of other shapes. Train into a new --out."
            )
        self.weights = arrays
