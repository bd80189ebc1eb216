"""Token cross-entropy from logits, with a gradient of one pass.

TensorFlow's `SparseSoftmaxCrossEntropyWithLogits` (behind Keras'
`sparse_categorical_crossentropy`) is the slowest single op of a training
step over a vocabulary on a CPU. `sparse_cross_entropy` computes the same
values from oneDNN's softmax, two row maxima and a gather, and its gradient
`p - onehot(y)` as one scaled copy of the probabilities with a scatter at
the labels, in well under the time (docs/performance.md has the figures;
`benchmarks/train_step.py` measures the whole step).
"""

from __future__ import annotations

import tensorflow as tf


@tf.custom_gradient
def _cross_entropy(labels, logits):
    shape = tf.shape(logits)
    rows = tf.reshape(tf.cast(logits, tf.float32), (-1, shape[-1]))
    probs = tf.nn.softmax(rows)
    # log Σ exp(l) = max(l) - log max(p): the largest probability is
    # 1 / Σ exp(l - max(l)), and never underflows (it is at least 1/V), so
    # the loss stays exact where the label's own probability is 0.
    log_normalizer = tf.reduce_max(rows, -1) - tf.math.log(
        tf.reduce_max(probs, -1)
    )
    flat = tf.reshape(tf.cast(labels, tf.int32), (-1,))
    at_labels = tf.stack([tf.range(tf.size(flat)), flat], 1)
    losses = log_normalizer - tf.gather_nd(rows, at_labels)

    def gradient(upstream):
        upstream = tf.reshape(tf.cast(upstream, tf.float32), (-1,))
        # d loss / d logits = p - onehot(label), per row times upstream.
        grad = tf.tensor_scatter_nd_sub(
            probs * upstream[:, None], at_labels, upstream
        )
        return None, tf.cast(tf.reshape(grad, shape), logits.dtype)

    return tf.reshape(losses, tf.shape(labels)), gradient


def sparse_cross_entropy(labels, logits):
    """Per-token `-log softmax(logits)[label]`, in float32.

    The values of `keras.losses.sparse_categorical_crossentropy(labels,
    logits, from_logits=True)`, computed and differentiated faster (see
    the module docstring); the gradient has the logits' dtype.

    Args:
        labels: int `(...)` or `(..., 1)`, each in `[0, V)`.
        logits: float `(..., V)`, any float dtype.

    Returns:
        float32 `(...)`.

    Raises:
        InvalidArgumentError: a label outside `[0, V)`, in a plain graph
            or eagerly on a CPU. Under XLA (`jit_compile=True`) and on a
            GPU such a label is not checked and its loss is undefined, as
            for Keras' loss.

    Example:
    >>> losses = sparse_cross_entropy(tf.constant([0]), tf.zeros((1, 4)))
    >>> round(float(losses[0]), 4)  # log 4
    1.3863
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == logits.shape.rank and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, -1)  # `(..., 1)`, as Keras' loss takes
    return _cross_entropy(labels, logits)
