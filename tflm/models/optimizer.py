"""tflm's optimizer and learning-rate schedule, shared by every way to train.

`CausalLM.compile()` and `tflm train` / `tflm finetune` (through
`tflm.train.optimizer.from_config`) use these same classes, so a model
trains the same way whichever road it takes.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

SCHEDULES = ("cosine", "linear", "constant")
_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Weight decay applies to matmul kernels only (as in GPT-2/nanoGPT): never to
# biases, normalization scales/offsets or input embeddings. Patterns match a
# variable's short name; an untied output head (`reverse_embeddings`) is a
# matmul kernel and is decayed.
NO_DECAY_NAMES = ("^bias$", "^gamma$", "^beta$", "^scale$", "^embeddings$")


@keras.saving.register_keras_serializable(package="tflm")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then cosine or linear decay to a floor (nanoGPT's).

    At update `step` (0-based): `peak * (step + 1) / (warmup_steps + 1)`
    while `step < warmup_steps`; then the decay from `peak` at
    `warmup_steps` to `floor` at `decay_steps`; `floor` after that.

    Args:
        peak: float. The learning rate after warm-up.
        warmup_steps: int. Steps of linear warm-up.
        decay_steps: int. The step at which the floor is reached (usually
            the total number of steps).
        floor: float. The final learning rate.
        kind: `"cosine"`, `"linear"` or `"constant"` (no decay).

    Example:
    >>> schedule = WarmupDecay(1e-3, 100, 2000, 1e-4)
    >>> round(float(schedule(100)), 6), round(float(schedule(2000)), 6)
    (0.001, 0.0001)
    """

    def __init__(
        self,
        peak: float,
        warmup_steps: int,
        decay_steps: int,
        floor: float = 0.0,
        kind: str = "cosine",
    ):
        if kind not in SCHEDULES:
            raise ValueError(
                f"kind must be one of {SCHEDULES}. Received: kind={kind!r}."
            )
        if warmup_steps < 0 or decay_steps < 0:
            raise ValueError(
                "warmup_steps and decay_steps must be >= 0. Received: "
                f"warmup_steps={warmup_steps}, decay_steps={decay_steps}."
            )
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps
        self.floor = floor
        self.kind = kind

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(self.warmup_steps)
        span = float(max(self.decay_steps - self.warmup_steps, 1))
        ratio = tf.clip_by_value((step - warmup) / span, 0.0, 1.0)
        if self.kind == "cosine":
            coefficient = 0.5 * (1.0 + tf.cos(math.pi * ratio))
        elif self.kind == "linear":
            coefficient = 1.0 - ratio
        else:
            coefficient = tf.ones_like(ratio)
        decayed = self.floor + coefficient * (self.peak - self.floor)
        warming = self.peak * (step + 1.0) / (warmup + 1.0)
        return tf.where(step < warmup, warming, decayed)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "floor": self.floor,
            "kind": self.kind,
        }


@keras.saving.register_keras_serializable(package="tflm")
class AdamW(keras.optimizers.AdamW):
    """Keras AdamW that clips the global norm of the *summed* gradient.

    Keras clips each replica's gradient before the cross-replica sum, so a
    mirrored run clips differently from a single-device one. This class
    clips after the sum. Weight decay skips the variables named in
    `NO_DECAY_NAMES` (biases, norms, embeddings).

    Args:
        clip_norm: float. Global-norm clip of the summed gradient; `None` or
            `0` for none.
        sum_gradients: bool. Sum gradients over replicas, as Keras does.
            `LMTrainer` sums them itself (so that the loss scaler sees the
            sum) and passes `False`.
        **kwargs: Passed to `keras.optimizers.AdamW`.
    """

    def __init__(
        self,
        *,
        clip_norm: float | None = 1.0,
        sum_gradients: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.clip_norm = clip_norm
        self.sum_gradients = sum_gradients
        self.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Called by the TensorFlow optimizer right before the update.
        if self.sum_gradients:
            grads_and_vars = super()._all_reduce_sum_gradients(grads_and_vars)
        grads_and_vars = list(grads_and_vars)
        if not self.clip_norm:
            return grads_and_vars
        grads = [g for g, _ in grads_and_vars]
        clipped, _ = tf.clip_by_global_norm(grads, self.clip_norm)
        return [
            (g, v) for g, (_, v) in zip(clipped, grads_and_vars, strict=True)
        ]

    def _apply_weight_decay(self, variables):
        # Decide on the Keras variables, whose names are the short ones that
        # `NO_DECAY_NAMES` match ("bias"): Keras' TensorFlow optimizer asks
        # with the `tf.Variable` inside ("bias:0"), which matches none, and
        # caches the answer by variable. Asking first caches the right one.
        super()._apply_weight_decay(
            [v for v in variables if self._use_weight_decay(v)]
        )

    def update_step(self, gradient, variable, learning_rate):
        # Keras' Adam makes ~10 passes over each variable (sub, mul,
        # assign_add for `m`, the same and a square for `v`, then mul,
        # sqrt, add, div, assign_sub); core TensorFlow's ResourceApplyAdam
        # is the same update in one pass (it has CPU, GPU and XLA kernels).
        if (
            self.amsgrad
            or isinstance(gradient, tf.IndexedSlices)
            or variable.dtype != tf.float32
        ):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1 = tf.cast(self.beta_1, tf.float32)
        beta_2 = tf.cast(self.beta_2, tf.float32)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, tf.float32),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, tf.float32),
            grad=tf.cast(gradient, tf.float32),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            clip_norm=self.clip_norm, sum_gradients=self.sum_gradients
        )
        return config


def make_optimizer(
    *,
    learning_rate: float,
    min_learning_rate: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "cosine",
    weight_decay: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.95,
    clip_norm: float | None = 1.0,
    precision: str = "float32",
    sum_gradients: bool = True,
) -> keras.optimizers.Optimizer:
    """AdamW with `WarmupDecay`, in a loss scaler for `mixed_float16`.

    Build it inside the strategy's scope.

    Args:
        learning_rate: peak learning rate.
        min_learning_rate: the floor the decay ends at.
        warmup_steps: linear warm-up steps.
        total_steps: updates in the run; the decay ends there.
        schedule: one of `SCHEDULES`.
        weight_decay: decoupled weight decay (scaled by the learning rate).
        beta_1: Adam's first-moment decay.
        beta_2: Adam's second-moment decay.
        clip_norm: global-norm clip; `None` or `0` for none.
        precision: one of `_PRECISIONS`.
        sum_gradients: see `AdamW`.

    Returns:
        The optimizer.
    """
    if precision not in _PRECISIONS:
        raise ValueError(
            f"precision must be one of {_PRECISIONS}. Received: "
            f"precision={precision!r}."
        )
    optimizer = AdamW(
        learning_rate=WarmupDecay(
            learning_rate,
            warmup_steps,
            total_steps,
            min_learning_rate,
            schedule,
        ),
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=1e-8,
        clip_norm=clip_norm,
        sum_gradients=sum_gradients,
    )
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
