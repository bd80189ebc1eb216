"""`LMTrainer`: the `keras.Model` that `fit` drives for a `CausalLM`."""

from __future__ import annotations

import keras
import tensorflow as tf

from tflm.models import causal_lm
from tflm.train import strategy as strategy_lib


def _sum_over_replicas(value):
    """Sums `value` over replicas; the identity with one replica."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _for_keras_reduction(logs):
    """Gives step outputs a batch axis when replicas span several workers.

    Keras reduces multi-worker step outputs with `reduce(MEAN, axis=0)`,
    which fails on scalars; elsewhere it averages local scalars.
    """
    if strategy_lib.spans_workers(tf.distribute.get_strategy()):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def _dense(gradient, variable):
    if gradient is None:
        return tf.zeros_like(variable)
    return tf.convert_to_tensor(gradient)


class LMTrainer(keras.Model):
    """Trains a `CausalLM` with exact gradient accumulation.

    Each `fit` step takes one global batch and makes one optimizer update.
    With `accumulation_steps=N`, every replica runs its rows as `N`
    micro-batches in a loop and sums their gradients, so the update equals
    that of the whole batch at once, while activations are held for a
    micro-batch only. The loss is the token-weighted mean over the global
    batch (all replicas, all micro-batches). Gradients are dense, and summed
    over replicas here when the optimizer is a `tflm.train.optimizer.AdamW`
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

    @property
    def _inner_optimizer(self):
        return getattr(self.optimizer, "inner_optimizer", self.optimizer)

    def _token_loss_sum(self, x, y, weight, training):
        logits = self.lm(x, training=training)
        losses = keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True
        )
        return tf.reduce_sum(tf.cast(losses, tf.float32) * weight)

    def _loss_and_gradients(self, x, y, weight, total_weight, variables):
        with tf.GradientTape() as tape:
            loss_sum = self._token_loss_sum(x, y, weight, training=True)
            scaled = self.optimizer.scale_loss(loss_sum / total_weight)
        gradients = tape.gradient(scaled, variables)
        # Dense gradients: Keras' Adam mishandles the repeated indices of an
        # embedding lookup's sparse gradient (it squares each slice before
        # summing), and accumulation needs dense sums anyway.
        return loss_sum, [
            _dense(g, v) for g, v in zip(gradients, variables, strict=True)
        ]

    def _accumulate(self, x, y, weight, total_weight, variables):
        n = self.accumulation_steps

        def split(t):
            return tf.reshape(t, tf.concat([[n, -1], tf.shape(t)[1:]], 0))

        xs, ys, ws = tf.nest.map_structure(split, (x, y, weight))

        def body(i, loss_sum, sums):
            micro = tf.nest.map_structure(lambda t: t[i], (xs, ys, ws))
            loss, grads = self._loss_and_gradients(
                *micro, total_weight, variables
            )
            return (
                i + 1,
                loss_sum + loss,
                [a + g for a, g in zip(sums, grads, strict=True)],
            )

        zeros = [tf.zeros_like(v) for v in variables]
        _, loss_sum, sums = tf.while_loop(
            lambda i, *_: i < n, body, (tf.constant(0), tf.constant(0.0), zeros)
        )
        return loss_sum, sums

    def train_step(self, data):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        weight = tf.ones_like(y, tf.float32) if weight is None else weight
        weight = tf.cast(weight, tf.float32)
        total_weight = _sum_over_replicas(tf.reduce_sum(weight))
        variables = self.lm.trainable_variables
        learning_rate = self.optimizer.learning_rate
        if self.accumulation_steps == 1:
            loss_sum, grads = self._loss_and_gradients(
                x, y, weight, total_weight, variables
            )
        else:
            loss_sum, grads = self._accumulate(
                x, y, weight, total_weight, variables
            )
        if not getattr(self._inner_optimizer, "sum_gradients", True):
            grads = _sum_over_replicas(list(grads))
        self.optimizer.apply(grads, variables)
        loss = _sum_over_replicas(loss_sum) / total_weight
        self.loss_tracker.update_state(loss)
        return _for_keras_reduction(
            {
                "loss": self.loss_tracker.result(),
                "step_loss": loss,
                "learning_rate": tf.cast(learning_rate, tf.float32),
            }
        )

    def test_step(self, data):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        weight = tf.ones_like(y, tf.float32) if weight is None else weight
        weight = tf.cast(weight, tf.float32)
        loss_sum = self._token_loss_sum(x, y, weight, training=False)
        # Every replica adds the global sums, so any replica's ratio is the
        # token-weighted mean over everything evaluated.
        self.loss_total.update_state(_sum_over_replicas(loss_sum))
        self.weight_total.update_state(
            _sum_over_replicas(tf.reduce_sum(weight))
        )
        total = tf.maximum(self.weight_total.result(), 1.0)
        return _for_keras_reduction({"loss": self.loss_total.result() / total})
