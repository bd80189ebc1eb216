"""GPT-2's tanh GELU, layer normalization and attention's masked softmax,
fused by XLA when training.

`gelu(x) = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, computed in
float32 whatever the input dtype, then cast back; `LayerNormalization` is
Keras' layer.

Without XLA, TensorFlow runs each of them and its autodiff gradient as
10–20 elementwise ops over `(B·T, width)` activations, each a pass over
memory (in bfloat16, Eigen converts element by element). In training
(`training=True`) each is instead an XLA-compiled function with a
hand-written gradient: one kernel forward, one backward, inside an
otherwise plain graph (the train step that Keras' `jit_compile="auto"`
runs on a CPU). The backward recomputes what it needs from the input, so
that no float32 copy of an activation is kept between the passes. What
each kernel saves a train step is measured in docs/performance.md.

Inference (generation, the export) never calls them: it is plain
TensorFlow, so that an export never needs XLA. This module is TensorFlow
code by design (`tf.custom_gradient`, `tf.function(jit_compile=True)`);
tflm runs on TensorFlow only. Set `TFLM_FUSED_KERNELS=0` in the
environment to train with the plain ops (a device without XLA, or to rule
these kernels out while debugging).
"""

from __future__ import annotations

import functools
import math
import os

import keras
import tensorflow as tf

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


def enabled() -> bool:
    """Whether training uses the fused kernels (`TFLM_FUSED_KERNELS`,
    read when a step is traced; on unless it is `0`)."""
    return os.environ.get("TFLM_FUSED_KERNELS", "1") != "0"


def _tanh_term(x32):
    return tf.tanh(_SQRT_2_OVER_PI * (x32 + _CUBIC * x32 * x32 * x32))


@tf.custom_gradient
def _gelu_with_gradient(x):
    x32 = tf.cast(x, tf.float32)

    def gradient(dy):
        # d/dx of 0.5 x (1 + t), with t' = (1 - t²) √(2/π) (1 + 3c x²).
        x32 = tf.cast(x, tf.float32)
        t = _tanh_term(x32)
        inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _CUBIC * x32 * x32)
        slope = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * inner
        return tf.cast(tf.cast(dy, tf.float32) * slope, x.dtype)

    return tf.cast(0.5 * x32 * (1.0 + _tanh_term(x32)), x.dtype), gradient


_fused_gelu = tf.function(
    _gelu_with_gradient, jit_compile=True, autograph=False
)


def gelu(x, training=None):
    """The tanh GELU of `x`, in `x`'s dtype; fused by XLA when `training`.

    Example:
    >>> round(float(gelu(tf.constant(1.0))), 6)
    0.841192
    """
    if training is True and enabled():
        return _fused_gelu(x)
    # Keras' own op, in float32 (the casts are no ops for float32 input, so
    # a float32 decode step is the graph it was before this module).
    h = keras.ops.gelu(tf.cast(x, tf.float32), approximate=True)
    return tf.cast(h, x.dtype)


# The score of a masked attention slot: large and negative, not -inf, so
# that a row with no visible slot (a padded query) is uniform, not NaN.
MASKED = -1e9


@tf.custom_gradient
def _masked_softmax_with_gradient(scores, mask, scale):
    scores32 = tf.where(mask, tf.cast(scores, tf.float32) * scale, MASKED)
    probs = tf.cast(tf.nn.softmax(scores32), scores.dtype)

    def gradient(dprobs):
        # p (dp - Σ dp·p), from the probabilities returned: nothing but
        # them is kept between the passes.
        p32 = tf.cast(probs, tf.float32)
        dp32 = tf.cast(dprobs, tf.float32)
        dot = tf.reduce_sum(dp32 * p32, -1, keepdims=True)
        # Masked slots took a constant: no gradient (a row with no visible
        # slot has p > 0 there).
        grad = tf.where(mask, p32 * (dp32 - dot) * scale, 0.0)
        return tf.cast(grad, scores.dtype), None, None

    return probs, gradient


_fused_masked_softmax = tf.function(
    _masked_softmax_with_gradient, jit_compile=True, autograph=False
)


def masked_softmax(scores, mask, scale: float = 1.0):
    """Softmax over the last axis of `scale · scores` where `mask`, computed
    in float32 and returned in `scores`' dtype; one XLA kernel each way.

    Attention's bfloat16 scores in training under a mixed policy: cast up,
    masked, normalized, cast back (and differentiated) in one pass instead
    of five or six. It is meant for bfloat16 scores: with float32 ones,
    oneDNN's own softmax measured faster (see docs/performance.md).

    Args:
        scores: float `(..., S)`.
        mask: broadcastable to `scores`, true (nonzero) where a slot may be
            attended; false slots get no weight.
        scale: float, applied in float32 (attention's `1/√H`, which a
            bfloat16 factor would round).

    Example:
    >>> mask = tf.constant([[True, True, False]])
    >>> [round(float(p), 2) for p in masked_softmax(tf.zeros((1, 3)), mask)[0]]
    [0.5, 0.5, 0.0]
    """
    mask = tf.cast(mask, tf.bool)
    return _fused_masked_softmax(scores, mask, tf.constant(scale, tf.float32))


@functools.cache
def _layer_norm_with_gradient(epsilon: float):
    """The fused layer norm for `epsilon` (two compiled functions each).

    The forward pass and `dx` are XLA kernels; `dgamma` and `dbeta`, sums
    over every row, are left to TensorFlow's own reductions, which
    measured faster than XLA's CPU backend for such column sums (see
    docs/performance.md).
    """

    def statistics(x):
        x32 = tf.cast(x, tf.float32)
        centered = x32 - tf.reduce_mean(x32, -1, keepdims=True)
        variance = tf.reduce_mean(centered * centered, -1, keepdims=True)
        rstd = tf.math.rsqrt(variance + epsilon)
        return centered * rstd, rstd

    def forward(x, gamma, beta):
        normed, _ = statistics(x)
        out = normed * tf.cast(gamma, tf.float32) + tf.cast(beta, tf.float32)
        return tf.cast(out, x.dtype)

    def backward(x, gamma, dy):
        """`dx` in x's dtype, and `dy · normed` in float32."""
        normed, rstd = statistics(x)
        dy32 = tf.cast(dy, tf.float32)
        g = dy32 * tf.cast(gamma, tf.float32)
        dx = rstd * (
            g
            - tf.reduce_mean(g, -1, keepdims=True)
            - normed * tf.reduce_mean(g * normed, -1, keepdims=True)
        )
        return tf.cast(dx, x.dtype), dy32 * normed

    forward = tf.function(forward, jit_compile=True, autograph=False)
    backward = tf.function(backward, jit_compile=True, autograph=False)

    def row_sum(t):
        return tf.reduce_sum(tf.reshape(t, (-1, t.shape[-1])), 0)

    @tf.custom_gradient
    def layer_norm(x, gamma, beta):
        def gradient(dy):
            dx, scaled = backward(x, gamma, dy)
            return (
                dx,
                tf.cast(row_sum(scaled), gamma.dtype),
                tf.cast(row_sum(tf.cast(dy, tf.float32)), beta.dtype),
            )

        return forward(x, gamma, beta), gradient

    return layer_norm


@keras.saving.register_keras_serializable(package="tflm")
class LayerNormalization(keras.layers.LayerNormalization):
    """Keras' `LayerNormalization`, fused by XLA when `training`.

    The same weights, config and inference arithmetic as Keras' layer (it
    is Keras' `call` outside training). In training, over the last axis with
    both `gamma` and `beta`, the statistics, the affine map and the
    gradient are one XLA kernel each way, in float32.

    Args:
        **kwargs: Passed to `keras.layers.LayerNormalization` (`epsilon`,
            `dtype`, `name`, ...).

    Example:
    >>> norm = LayerNormalization(epsilon=1e-5)
    >>> x = tf.constant([[1.0, 2.0, 3.0]])
    >>> [round(float(v), 4) for v in norm(x, training=True)[0]]
    [-1.2247, 0.0, 1.2247]
    """

    def call(self, inputs, training=None):
        axis = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        last = axis in ([-1], [len(inputs.shape) - 1])
        plain = self.rms_scaling or not (self.center and self.scale and last)
        if training is not True or plain or not enabled():
            return super().call(inputs)
        out = _layer_norm_with_gradient(self.epsilon)(
            inputs,
            tf.convert_to_tensor(self.gamma),
            tf.convert_to_tensor(self.beta),
        )
        return tf.cast(out, self.compute_dtype)
