"""One-row projections under XLA: a narrowing kernel multiplied transposed.

In a decode step at batch 1 every projection is a matrix-vector product,
bound by reading the kernel. XLA's CPU code for `x @ W` reads a `Dense`
kernel `(in, out)` fastest when its rows are long: measured on this
project's CPU (`jit_compile=True`, float32, kernels chained past the
caches), `(384, 1536)` takes 63 µs as stored and 81 µs transposed, but the
narrowing `(1536, 384)` takes 96 µs as stored and 56 µs as `x @ Wtᵀ` with
`Wt` `(384, 1536)`. With two or more rows the stored layout is the faster
one in every shape (1.3-1.6x).

Within `narrowing_transposed()`, `project(layer, x)` of a one-row `x`
through a plain `Dense` with more inputs than outputs (the MLP's output
projection) multiplies by `tflm.graph.transposed(kernel)`: inside the
decode loop's `reads_hoisted()`, a copy transposed once before the loop.
XLA generation enters it (`tflm.generation.api`): bench-small greedy at
batch 1 went from 272 to 319 new tokens/s (best of 7 alternating calls)
with the same tokens. Elsewhere `project` is `layer(x)`, so training and
the export (which stores its own layout, `tflm.export.layout`) are as
before.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

from tflm import graph

_MODE = threading.local()


@contextlib.contextmanager
def narrowing_transposed():
    """Within: `project` multiplies one-row inputs of narrowing projections
    by the transposed kernel (see the module docstring)."""
    before = getattr(_MODE, "on", False)
    _MODE.on = True
    try:
        yield
    finally:
        _MODE.on = before


def _applies(layer, x) -> bool:
    if not (
        getattr(_MODE, "on", False)
        and x.shape.rank == 2
        and x.shape[0] == 1
        and type(layer) is keras.layers.Dense  # not LoRA
        and layer.activation in (None, keras.activations.linear)
        and not layer.quantization_mode
    ):
        return False
    kernel = keras.backend.standardize_dtype(layer.kernel.dtype)
    fan_in, fan_out = layer.kernel.shape
    return layer.compute_dtype == kernel and fan_in > fan_out


def project(layer: keras.layers.Dense, x):
    """`layer(x)` for `x` `(rows, in)`; see the module docstring.

    Example:
    >>> dense = keras.layers.Dense(2)
    >>> project(dense, tf.ones((1, 6))).shape
    TensorShape([1, 2])
    """
    if not _applies(layer, x):
        return layer(x)
    kernel_t = graph.transposed(layer.kernel)
    y = tf.matmul(tf.cast(x, kernel_t.dtype), kernel_t, transpose_b=True)
    if layer.bias is None:
        return y
    bias = layer.bias.value
    if y.dtype != bias.dtype:  # a float32 bias, as `Dense` adds it
        y, bias = tf.cast(y, tf.float32), tf.cast(bias, tf.float32)
    return tf.nn.bias_add(y, bias)
