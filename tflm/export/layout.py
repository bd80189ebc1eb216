"""The export's weight layout: kernels and the tied table stored transposed.

A Keras `Dense` kernel is `(in, out)`. In the plain graph that TF Serving
runs (oneDNN matmuls, no XLA), `x @ W` with `W` stored `(out, in)` and
`transpose_b=True` measured faster for the narrow inputs of a decode step:
an MLP's two matmuls chained as in a block, float32, 0.464 -> 0.383 ms at
batch 1 and 1.01 -> 0.77 ms at batch 8 on this project's CPU (bfloat16:
0.80 -> 0.56 and 0.77 -> 0.68).

The tied output head is the other way round: `hidden @ table_t` with the
table stored `(D, V)` beat `hidden @ tableᵀ` on the `(V, D)` table, 402 vs
634 µs for a float32 `(384, 7680)` at batch 1 and 10.9 vs 18.4 ms for
GPT-2's `(768, 49920)` at batch 8 (bfloat16: 427 vs 508 µs, and even at
GPT-2's size). So `TransposedTable` stores a tied table transposed, and
its lookup gathers columns: served gpt2-124m float32 at 64 new tokens,
alternating, went from 27.9 to 32.3 tokens/s at batch 1 and from 126 to
138 at batch 8 (bench-small: within the noise, 155.0 vs 154.7 and 730 vs
723). The export's `score` runs the same swapped layers, so the SavedModel
still holds one table.

A projection kernel of 256 KiB or more, with 256 rows or more (so that
each block keeps 64), is multiplied in four blocks of its stored rows
(`num_row_blocks`; split once per call, before the decode loop), whose
outputs are concatenated. With oneDNN's MatMul (TensorFlow's default on
x86) those are the same numbers as one product in the shapes measured:
each output is the same dot product, summed in the same order (equal in
float32 and bfloat16 at 1 and 8 rows for bench-small's and GPT-2's
kernels, and the generated tokens were identical). Blocks narrower than
64 rows may take another oneDNN kernel, and Eigen's threaded MatMul
(`TF_ENABLE_ONEDNN_OPTS=0`, or an aarch64 build) sums in another order
at two rows or more: there the last bits may differ. The four matmuls
are independent, so the plain graph's executor runs them on both cores,
where oneDNN's one product of a decode step's few rows keeps mostly one
busy (the same served bfloat16 step measured 4.8 ms with one thread per
op and with two). Measured on this project's 2-core CPU; a host with many
cores threads each product already, and there the blocks are only four
products instead of one.
Served bench-small, greedy 300 characters + 192 tokens, the exports
alternating in one process (medians of 6): float32 182 -> 246 new
tokens/s at batch 1, bfloat16 199 -> 234, and bfloat16 936 -> 1,016 at
batch 8; two blocks gave 225 and three 227 (bfloat16, batch 1).
gpt2-124m float32, whose 500 MB of weights are read from memory at every
step, stayed at 36 tokens/s at batch 1.

`transposed_projections(model)` swaps every float32 or bfloat16 projection
of the decoder blocks for a `TransposedDense` with that layout, and a tied
table for a `TransposedTable`, for the duration of an export, then puts the
original layers back: the exported graph reads only the transposed kernels
(so the SavedModel holds one copy), and the model in memory is as it was.
int8 projections and tables keep Keras' own quantized matmul.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from tflm import graph
from tflm.layers import matvec
from tflm.models import weights as weights_lib

# See the module docstring.
ROW_BLOCKS = 4
ROW_BLOCK_MIN_BYTES = 256 * 1024
ROW_BLOCK_MIN_ROWS = 64


def num_row_blocks(rows: int, cols: int, dtype: str) -> int:
    """How many row blocks `TransposedDense` multiplies its `(rows, cols)`
    kernel by: `ROW_BLOCKS` for a kernel of `ROW_BLOCK_MIN_BYTES` or more
    whose blocks keep `ROW_BLOCK_MIN_ROWS` rows or more, else 1.

    Example:
    >>> num_row_blocks(1152, 384, "float32")
    4
    >>> num_row_blocks(96, 64, "float32")
    1
    """
    dtype = keras.backend.standardize_dtype(dtype)
    nbytes = rows * cols * tf.as_dtype(dtype).size
    if nbytes < ROW_BLOCK_MIN_BYTES or rows < ROW_BLOCKS * ROW_BLOCK_MIN_ROWS:
        return 1
    return ROW_BLOCKS


class TransposedDense(tf.Module):
    """`x @ kernel_t^T + bias`, `kernel_t` being a `Dense` kernel transposed
    (`(out, in)`): what that `Dense` computes, in the same dtypes (inputs
    cast to the kernel's dtype; a float32 bias makes the output float32)."""

    def __init__(self, dense: keras.layers.Dense):
        super().__init__(name=dense.name)
        # A Keras variable, so that `tflm.graph.reads_hoisted` reads it
        # once before the decode loop, as it does the model's own weights.
        self.kernel_t = keras.Variable(
            tf.transpose(dense.kernel),
            trainable=False,
            autocast=False,
            name="kernel_t",
        )
        self.bias = dense.bias
        self.num_blocks = num_row_blocks(
            *self.kernel_t.shape, self.kernel_t.dtype
        )

    def __call__(self, inputs):
        bias = None if self.bias is None else tf.convert_to_tensor(self.bias)
        if self.num_blocks > 1:
            kernel_t = graph.row_blocks(self.kernel_t, self.num_blocks)
        else:
            kernel_t = tf.convert_to_tensor(self.kernel_t)
        return matvec.times_transposed(inputs, kernel_t, bias)


class TransposedTable(tf.Module):
    """A tied `ReversibleEmbedding` with its table stored transposed,
    `(D, V)`, in the dtype its output head multiplies in: the head is
    `hidden @ table_t`, and the lookup gathers columns. Computes what the
    embedding does, in the same dtypes.

    Args:
        embedding: a built, tied `ReversibleEmbedding` (see
            `_transposable_table` for which ones).

    Call arguments:
        inputs: int ids `(...)`, or hidden states `(..., D)` with
            `reverse=True`.
        reverse: bool. The output head instead of the lookup.

    Returns:
        `(..., D)` in the embedding's compute dtype, or logits `(..., V)`
        in the head's dtype.
    """

    def __init__(self, embedding: keras.layers.ReversibleEmbedding):
        super().__init__(name=embedding.name)
        head_dtype = embedding.reverse_dtype or embedding.compute_dtype
        self.table_t = keras.Variable(
            tf.cast(tf.transpose(embedding.embeddings), head_dtype),
            trainable=False,
            autocast=False,
            name="embeddings_t",
        )
        self.compute_dtype = embedding.compute_dtype

    def __call__(self, inputs, reverse=False):
        table_t = tf.convert_to_tensor(self.table_t)
        if reverse:
            return tf.matmul(tf.cast(inputs, table_t.dtype), table_t)
        columns = tf.gather(table_t, tf.cast(inputs, tf.int32), axis=1)
        rank = inputs.shape.rank
        x = tf.transpose(columns, [*range(1, rank + 1), 0])  # (..., D)
        return tf.cast(x, self.compute_dtype)


def _transposable_table(embedding) -> bool:
    # The table is stored in the head's dtype, which the lookup also reads:
    # exact only where the head multiplies in the table's own dtype, or
    # the lookup's output is cast to it anyway (a mixed policy).
    table = keras.backend.standardize_dtype(embedding.embeddings.dtype)
    return (
        matvec.plain_table(embedding)
        and table in ("float32", "bfloat16")
        and embedding.reverse_dtype in (None, table)
    )


@contextlib.contextmanager
def transposed_projections(model):
    """Within: `model`'s float32 and bfloat16 projections multiply by
    transposed kernels (see the module docstring). Yields how many layers
    were swapped."""
    swapped = []
    try:
        for parent, attr, layer in weights_lib.projection_slots(model):
            if matvec.plain_dense(layer):
                object.__setattr__(parent, attr, TransposedDense(layer))
                swapped.append((parent, attr, layer))
        embedding = model.backbone.token_embedding
        if _transposable_table(embedding):
            table = TransposedTable(embedding)
            object.__setattr__(model.backbone, "token_embedding", table)
            swapped.append((model.backbone, "token_embedding", embedding))
        if swapped:
            model._generators = {}  # traced with the other layers
        yield len(swapped)
    finally:
        for parent, attr, layer in swapped:
            object.__setattr__(parent, attr, layer)
        if swapped:
            model._generators = {}
