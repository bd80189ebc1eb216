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
batch 1 went from 272 to 319 and from 300 to 337 new tokens/s in two
alternating runs (best of 5-7 calls each), with the same tokens; gpt2-124m
from 40.7 to 42.1 (medians of 9). Elsewhere `project` is `layer(x)`, so
training and the export (which stores its own layout,
`tflm.export.layout`) are as before.
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


def plain_dense(layer) -> bool:
    """A `Dense` (not a subclass such as LoRA's) with no activation, not
    quantized, no adapter, and float32 or bfloat16 kernels in their own
    compute dtype (a mixed policy needs Keras' autocast): one whose kernel
    may be multiplied by directly."""
    if not (
        type(layer) is keras.layers.Dense
        and layer.activation in (None, keras.activations.linear)
        and not layer.quantization_mode
        and not layer.lora_enabled
    ):
        return False
    kernel = keras.backend.standardize_dtype(layer.kernel.dtype)
    return kernel in ("float32", "bfloat16") and layer.compute_dtype == kernel


def times_transposed(x, kernel_t, bias=None):
    """`x @ kernel_tᵀ + bias` as `Dense` computes it: `x` cast to the
    kernel's dtype, and a float32 `bias` makes the output float32."""
    y = tf.matmul(tf.cast(x, kernel_t.dtype), kernel_t, transpose_b=True)
    if bias is None:
        return y
    if y.dtype != bias.dtype:
        y, bias = tf.cast(y, tf.float32), tf.cast(bias, tf.float32)
    return tf.nn.bias_add(y, bias)


def _applies(layer, x) -> bool:
    return (
        getattr(_MODE, "on", False)
        and x.shape.rank == 2
        and x.shape[0] == 1
        and plain_dense(layer)
        and layer.kernel.shape[0] > layer.kernel.shape[1]
    )


def project(layer: keras.layers.Dense, x):
    """`layer(x)` for `x` `(rows, in)`; see the module docstring.

    Args:
        layer: a built `Dense`.
        x: `(rows, in)`.

    Returns:
        What `layer(x)` returns, in its dtype.

    Example:
    >>> dense = keras.layers.Dense(2)
    >>> project(dense, tf.ones((1, 6))).shape
    TensorShape([1, 2])
    """
    if not _applies(layer, x):
        return layer(x)
    bias = None if layer.bias is None else layer.bias.value
    return times_transposed(x, graph.transposed(layer.kernel), bias)
