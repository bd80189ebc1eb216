"""Decode-loop layouts: narrowing kernels and the tied head, transposed.

A decode step's projections are products of a few rows with each kernel,
bound by reading it, and which layout reads fastest depends on the
backend. Measured on this project's CPU (float32, kernels chained past the
caches):

- XLA (`jit_compile=True`) reads a `Dense` kernel `(in, out)` fastest when
  its rows are long: the widening `(384, 1536)` takes 63 µs as stored and
  81 µs transposed, but the narrowing `(1536, 384)` 96 µs as stored and
  56 µs as `x @ Wtᵀ` with `Wt` `(384, 1536)`, at one row; with two or more
  rows the stored layout is the faster one in every shape (1.3-1.6x).
- The plain graph (oneDNN) runs the narrowing `(1536, 384)` in 137 µs
  transposed against 186 as stored at one row (185 vs 227 at eight), and
  the tied head `hidden @ tableᵀ` of bench-small's `(8192, 384)` table
  faster with the table transposed to `(D, V)` (402 vs 634 µs for a
  `(7680, 384)` at one row, 872 vs 1,236 at eight).

Within `decode_layout("xla")`, `project(layer, x)` of a one-row `x`
through a plain `Dense` with more inputs than outputs (the MLP's output
projection) multiplies by `tflm.graph.transposed(kernel)`: inside the
decode loop's `reads_hoisted()`, a copy transposed once before the loop.
Within `decode_layout("graph")` it does so at any number of rows, and
`head(embedding, hidden)` multiplies by the tied table transposed once.
Generation enters them around its decode and beam-search loops
(`tflm.generation.api`; streaming, which runs the loop in chunks, does
not). Measured, bench-small
greedy 64 + 192, alternating in one process, with the same tokens: XLA
batch 1 from 272 to 319 and from 300 to 337 new tokens/s (gpt2-124m: 40.7
to 42.1, medians of 9); the plain graph from 159.5 to 177.3 at batch 1 and
from 611.6 to 691.9 at batch 8 (best of 5); 4-beam search at batch 1
from 109.7 to 112.9 (medians of 5, within the noise). Elsewhere `project` is
`layer(x)` and `head` the embedding's own, so training and the export
(which stores its own layout, `tflm.export.layout`) are as before.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

from tflm import graph

_MODE = threading.local()


BACKENDS = ("xla", "graph")


@contextlib.contextmanager
def decode_layout(backend: str):
    """Within: `project` and `head` use `backend`'s faster layout, one of
    `BACKENDS` (see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {BACKENDS}. Received: {backend!r}."
        )
    with graph.thread_setting(_MODE, "backend", backend):
        yield


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
    kernel's dtype, and a float32 `bias` makes the output float32.

    `kernel_t` may also be a sequence of its row blocks: one product per
    block, the outputs concatenated, from independent ops that the plain
    graph's executor runs side by side (`tflm.export.layout`; with
    oneDNN's MatMul and blocks of 64 rows or more, the same numbers as
    one product).
    """
    blocks = kernel_t if isinstance(kernel_t, list | tuple) else [kernel_t]
    if not blocks:
        raise ValueError("kernel_t must hold at least one block. Received: [].")
    x = tf.cast(x, blocks[0].dtype)
    ys = [tf.matmul(x, block, transpose_b=True) for block in blocks]
    y = ys[0] if len(ys) == 1 else tf.concat(ys, axis=-1)
    if bias is None:
        return y
    if y.dtype != bias.dtype:
        y, bias = tf.cast(y, tf.float32), tf.cast(bias, tf.float32)
    return tf.nn.bias_add(y, bias)


def plain_table(embedding) -> bool:
    """A tied `ReversibleEmbedding` with no quantization, adapter or soft
    cap: one whose table the head may multiply by directly."""
    return (
        isinstance(embedding, keras.layers.ReversibleEmbedding)
        and embedding.tie_weights
        and not embedding.quantization_mode
        and not embedding.lora_enabled
        and embedding.logit_soft_cap is None
    )


def _head_dtype(embedding) -> str:
    return embedding.reverse_dtype or embedding.compute_dtype


def _applies(layer, x) -> bool:
    backend = getattr(_MODE, "backend", None)
    if backend is None or x.shape.rank != 2 or not plain_dense(layer):
        return False
    narrowing = layer.kernel.shape[0] > layer.kernel.shape[1]
    return narrowing and (backend == "graph" or x.shape[0] == 1)


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


def head(embedding, hidden):
    """`embedding(hidden, reverse=True)`; see the module docstring.

    Args:
        embedding: the backbone's `ReversibleEmbedding`.
        hidden: `(..., D)`.

    Returns:
        Logits `(..., V)` in the head's dtype.
    """
    if not (
        getattr(_MODE, "backend", None) == "graph"
        and plain_table(embedding)
        and _head_dtype(embedding) == embedding.embeddings.dtype
    ):  # (a mixed policy would cast the whole table at every step)
        return embedding(hidden, reverse=True)
    table_t = graph.transposed(embedding.embeddings)
    return tf.matmul(tf.cast(hidden, table_t.dtype), table_t)
