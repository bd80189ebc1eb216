"""`LMTrainer`: the `keras.Model` that `fit` drives for a `CausalLM`."""

from __future__ import annotations

import keras
import tensorflow as tf

from tflm.models import causal_lm
from tflm.models import train_step


class LMTrainer(keras.Model):
    """Trains a `CausalLM` with exact gradient accumulation.

    Each `fit` step takes one global batch and makes one optimizer update.
    With `accumulation_steps=N`, every replica runs its rows as `N`
    micro-batches in a loop and sums their gradients, so the update equals
    that of the whole batch at once, while activations are held for a
    micro-batch only. The loss is the token-weighted mean over the global
    batch (all replicas, all micro-batches). Gradients are dense, and summed
    over replicas here when the optimizer is a `tflm.models.optimizer.AdamW`
    with `sum_gradients=False` (so that a loss scaler checks the sum and
    clipping sees it), by the optimizer otherwise.

    Args:
        model: the `CausalLM` to train; its weights are updated in place.
        accumulation_steps: int. Micro-batches per replica per update.
        **kwargs: Passed to `keras.Model` (`name`).

    Call arguments:
        inputs: dict with `token_ids` and `padding_mask` `(B, T)`.

    Returns:
        From `fit`, per step: `loss` (mean over the epoch so far),
        `step_loss` (this update's loss) and `learning_rate` (this
        update's). From `evaluate`: `loss`, the token-weighted mean.

    Example:
    >>> import keras
    >>> from tflm.models import CausalLM
    >>> trainer = LMTrainer(CausalLM.from_preset("tiny"))
    >>> trainer.compile(optimizer=keras.optimizers.AdamW())
    """

    def __init__(
        self, model: causal_lm.CausalLM, accumulation_steps: int = 1, **kwargs
    ):
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(
                "accumulation_steps must be a positive integer. Received: "
                f"accumulation_steps={accumulation_steps!r}."
            )
        super().__init__(**kwargs)
        self.lm = model
        self.accumulation_steps = accumulation_steps
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.loss_total = keras.metrics.Sum(name="loss_total")
        self.weight_total = keras.metrics.Sum(name="weight_total")
        self.built = True

    def call(self, inputs, training=None):
        return self.lm(inputs, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a distribution strategy Keras builds the model by reading a
        # batch from a fresh iterator before training starts; with a seeded,
        # reshuffled dataset that would shift the data order away from the
        # default strategy's. Everything is built already, so skip it.
        if (
            self.lm.built
            and self.optimizer is not None
            and self.optimizer.built
        ):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def metrics(self):
        return [self.loss_tracker, self.loss_total, self.weight_total]

    def train_step(self, data):
        loss, learning_rate = train_step.apply(
            self.lm, self.optimizer, data, self.accumulation_steps
        )
        self.loss_tracker.update_state(loss)
        return train_step.for_keras_reduction(
            {
                "loss": self.loss_tracker.result(),
                "step_loss": loss,
                "learning_rate": learning_rate,
            }
        )

    def test_step(self, data):
        x, y, weight = train_step.unpack(data)
        loss_sum = train_step.token_loss_sum(self.lm, x, y, weight, False)
        # Every replica adds the global sums, so any replica's ratio is the
        # token-weighted mean over everything evaluated.
        self.loss_total.update_state(train_step.sum_over_replicas(loss_sum))
        self.weight_total.update_state(
            train_step.sum_over_replicas(tf.reduce_sum(weight))
        )
        total = tf.maximum(self.weight_total.result(), 1.0)
        return train_step.for_keras_reduction(
            {"loss": self.loss_total.result() / total}
        )
