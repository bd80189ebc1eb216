"""The one train step of a `CausalLM`, whichever road trains it.

`CausalLM.train_step` (behind `compile()` + `fit`) and
`tflm.train.trainer.LMTrainer` (behind `tflm train` / `tflm finetune`) both
call `apply`: the loss is the token-weighted mean over the global batch
(`sample_weight` masks prompt and padding tokens), gradients of
`accumulation_steps` micro-batches are summed exactly, summed over replicas
before the optimizer clips their global norm (`tflm.models.optimizer.AdamW`
with `sum_gradients=False`), and one update is made.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from tflm.models import losses as losses_lib


def sum_over_replicas(value):
    """Sums `value` over replicas; the identity with one replica."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def spans_workers(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` has replicas on more than one worker."""
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


def for_keras_reduction(logs):
    """Gives step outputs a batch axis when replicas span several workers.

    Keras reduces multi-worker step outputs with `reduce(MEAN, axis=0)`,
    which fails on scalars; elsewhere it averages local scalars.
    """
    if spans_workers(tf.distribute.get_strategy()):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def _dense(gradient, variable):
    if gradient is None:
        return tf.zeros_like(variable)
    return tf.convert_to_tensor(gradient)


def unpack(data):
    """`(x, y, float32 weight)` of a batch; weight 1 where none is given."""
    x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
    weight = tf.ones_like(y, tf.float32) if weight is None else weight
    return x, y, tf.cast(weight, tf.float32)


def token_loss_sum(model, x, y, weight, training, on_logits=None):
    """Sum over tokens of `weight * cross-entropy`, float32."""
    logits = model(x, training=training)
    if on_logits is not None:
        on_logits(y, logits, weight)
    losses = losses_lib.sparse_cross_entropy(y, logits)
    return tf.reduce_sum(losses * weight)


def _loss_and_gradients(model, optimizer, batch, total_weight, on_logits):
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss_sum = token_loss_sum(model, *batch, True, on_logits)
        scaled = optimizer.scale_loss(loss_sum / total_weight)
    gradients = tape.gradient(scaled, variables)
    # Dense gradients: Keras' Adam mishandles the repeated indices of an
    # embedding lookup's sparse gradient (it squares each slice before
    # summing), and accumulation needs dense sums anyway.
    return loss_sum, [
        _dense(g, v) for g, v in zip(gradients, variables, strict=True)
    ]


def _accumulate(model, optimizer, batch, total_weight, n, on_logits):
    def split(t):
        return tf.reshape(t, tf.concat([[n, -1], tf.shape(t)[1:]], 0))

    parts = tf.nest.map_structure(split, batch)

    def body(i, loss_sum, sums):
        micro = tf.nest.map_structure(lambda t: t[i], parts)
        loss, grads = _loss_and_gradients(
            model, optimizer, micro, total_weight, on_logits
        )
        return (
            i + 1,
            loss_sum + loss,
            [a + g for a, g in zip(sums, grads, strict=True)],
        )

    zeros = [tf.zeros_like(v) for v in model.trainable_variables]
    _, loss_sum, sums = tf.while_loop(
        lambda i, *_: i < n, body, (tf.constant(0), tf.constant(0.0), zeros)
    )
    return loss_sum, sums


def apply(
    model,
    optimizer,
    data,
    accumulation_steps: int = 1,
    on_logits: Callable | None = None,
):
    """Runs one update of `model.trainable_variables` on a global batch.

    Args:
        model: a `CausalLM` (anything mapping inputs to float logits).
        optimizer: a Keras optimizer; a `tflm.models.optimizer.AdamW` with
            `sum_gradients=False` gets gradients summed over replicas here,
            so that clipping (and a loss scaler) sees the sum.
        data: `(x, y)` or `(x, y, sample_weight)`, this replica's rows.
        accumulation_steps: micro-batches per replica; must divide the rows.
        on_logits: optional `f(y, logits, weight)` called per micro-batch
            (to update metrics).

    Returns:
        `(loss, learning_rate)`: this update's token-weighted mean loss
        over the global batch, and the learning rate it used.
    """
    x, y, weight = unpack(data)
    total_weight = sum_over_replicas(tf.reduce_sum(weight))
    # An all-masked batch would divide by zero.
    total_weight = tf.maximum(total_weight, 1.0)
    learning_rate = optimizer.learning_rate
    batch = (x, y, weight)
    if accumulation_steps == 1:
        loss_sum, grads = _loss_and_gradients(
            model, optimizer, batch, total_weight, on_logits
        )
    else:
        loss_sum, grads = _accumulate(
            model, optimizer, batch, total_weight, accumulation_steps, on_logits
        )
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not getattr(inner, "sum_gradients", True):
        grads = sum_over_replicas(list(grads))
    optimizer.apply(grads, model.trainable_variables)
    loss = sum_over_replicas(loss_sum) / total_weight
    return loss, tf.cast(learning_rate, tf.float32)
