"""The decode plan: how a model's weights are read and multiplied while
it decodes.

A decode step multiplies a few rows by every kernel, so it is bound by
reading weights, and the layout that reads fastest depends on where the
step runs (see docs/performance.md). The choices are data, made once:

- `Layout` names them: `backend`, where the loop runs: `"xla"` (compiled;
  a narrowing projection, more inputs than outputs, multiplies by its
  kernel transposed at one row; cache writes by scatter) or `"graph"` (the
  plain graph that TF Serving runs: narrowing projections transposed at
  any row count, the tied head multiplied by the table transposed, and
  cache writes in place in a loop that owns its cache); `relayout=False`
  keeps every layer as stored (a loop run in chunks, which would transpose
  at every chunk); `stored`, a `StoredWeights` whose transposed (and
  row-blocked) kernels and tied table an export keeps instead of the
  model's own.
- `DecodePlan` is built from a model and a `Layout` inside a traced
  function, before its decode loop: every weight the step reads is read
  there once (and transposed or split once), and a loop body captures
  those reads. Layers take it as their `plan` call argument and ask it
  for their projections, the head, the token lookup and the cache write.
  Nothing here is a mode: a layer called without a plan computes what it
  always does, and two plans can be traced side by side.

`CausalLM.decoding(layout)` builds a plan and hands the loops of
`tflm.generation` what they call (`tflm.generation.loop.Decoding`), so
that they import no model.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import NamedTuple

import keras
import tensorflow as tf

from tflm.layers import kv_cache
from tflm.models import weights as weights_lib

BACKENDS = ("xla", "graph")
# A projection kernel of `ROW_BLOCK_MIN_BYTES` or more whose blocks keep
# `ROW_BLOCK_MIN_ROWS` rows is multiplied in `ROW_BLOCKS` blocks of its
# stored `(out, in)` rows: independent matmuls that the plain graph's
# executor runs side by side (with oneDNN, the same numbers as one product).
ROW_BLOCKS = 4
ROW_BLOCK_MIN_BYTES = 256 * 1024
ROW_BLOCK_MIN_ROWS = 64


def num_row_blocks(rows: int, cols: int, dtype: str) -> int:
    """How many row blocks a stored `(rows, cols)` kernel is multiplied in.

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


def split_rows(value, parts: int) -> tuple:
    """A matrix's rows in `parts` blocks, as equal as can be (the first
    ones a row longer).

    Example:
    >>> [tuple(b.shape) for b in split_rows(tf.ones((3, 1)), 2)]
    [(2, 1), (1, 1)]
    """
    rows = value.shape[0]
    if not (isinstance(parts, int) and 1 <= parts <= rows):
        raise ValueError(
            f"parts must be an int from 1 to the matrix's {rows} rows. "
            f"Received: parts={parts!r}."
        )
    sizes = [rows // parts + (i < rows % parts) for i in range(parts)]
    return tuple(tf.split(value, sizes, axis=0))


def plain_dense(layer) -> bool:
    """A `Dense` (not a subclass such as LoRA's) with no activation, not
    quantized, no adapter, and float32 or bfloat16 kernels in their own
    compute dtype: one whose kernel may be multiplied by directly."""
    if not (
        type(layer) is keras.layers.Dense
        and layer.activation in (None, keras.activations.linear)
        and not layer.quantization_mode
        and not layer.lora_enabled
    ):
        return False
    kernel = keras.backend.standardize_dtype(layer.kernel.dtype)
    return kernel in ("float32", "bfloat16") and layer.compute_dtype == kernel


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


def head_dtype(embedding) -> str:
    return embedding.reverse_dtype or embedding.compute_dtype


def times_transposed(x, kernel_t, bias=None):
    """`x @ kernel_tᵀ + bias` as `Dense` computes it: `x` cast to the
    kernel's dtype, and a float32 `bias` makes the output float32.

    `kernel_t` may be a sequence of its row blocks: one product per block,
    the outputs concatenated.

    Example:
    >>> times_transposed(tf.ones((1, 3)), tf.ones((2, 3))).numpy().tolist()
    [[3.0, 3.0]]
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


class _StoredKernel(NamedTuple):
    kernel_t: keras.Variable  # `(out, in)`
    num_blocks: int


class StoredWeights(tf.Module):
    """Copies of a model's weights in the plain graph's decode layout, for
    an export to store instead of the model's own: every plain float32 or
    bfloat16 projection of the decoder blocks transposed to `(out, in)`
    (multiplied in `num_row_blocks` blocks), and a tied table transposed to
    `(D, V)` in the head's dtype (its lookup gathers columns). int8 and
    adapter layers keep Keras' own matmuls. The model is left as it is.

    Args:
        model: a `CausalLM`.
    """

    def __init__(self, model):
        super().__init__(name="stored_weights")
        self._kernels = {}
        for layer in weights_lib.projections(model):
            if plain_dense(layer):
                kernel_t = keras.Variable(
                    tf.transpose(layer.kernel),
                    trainable=False,
                    autocast=False,
                    name="kernel_t",
                )
                blocks = num_row_blocks(*kernel_t.shape, kernel_t.dtype)
                self._kernels[id(layer)] = _StoredKernel(kernel_t, blocks)
        embedding = model.backbone.token_embedding
        self.table_t = None
        table = keras.backend.standardize_dtype(embedding.embeddings.dtype)
        # Stored in the head's dtype, which the lookup also reads: exact only
        # where the head multiplies in the table's own dtype.
        if (
            plain_table(embedding)
            and table in ("float32", "bfloat16")
            and embedding.reverse_dtype in (None, table)
        ):
            self.table_t = keras.Variable(
                tf.cast(
                    tf.transpose(embedding.embeddings), head_dtype(embedding)
                ),
                trainable=False,
                autocast=False,
                name="embeddings_t",
            )

    def kernel(self, layer) -> _StoredKernel | None:
        return self._kernels.get(id(layer))

    @property
    def count(self) -> int:
        """How many layers it replaces (projections and the table)."""
        return len(self._kernels) + (self.table_t is not None)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which layouts a plan uses (see the module docstring).

    Args:
        backend: `"xla"` or `"graph"`, where the loop runs.
        relayout: transpose projections and the head where `backend`
            reads them faster so; `False`: as stored.
        stored: an export's `StoredWeights`, or `None`.
    """

    backend: str = "graph"
    relayout: bool = True
    stored: StoredWeights | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {BACKENDS}. Received: "
                f"backend={self.backend!r}."
            )

    @property
    def in_place(self) -> bool:
        """Whether a loop that owns its cache writes it in place (XLA has
        no kernel for it)."""
        return self.backend == "graph"


class WeightReads(keras.StatelessScope):
    """Keras' stateless scope, whose value for a variable is that variable
    read (and autocast) once in the graph where the scope was made: a loop
    body traced within captures that read as a loop invariant. Only the
    variables that traced code uses are read, once per dtype, so an export
    holds no unused one. Assigning a variable within raises `ValueError`.
    """

    def __init__(self, graph):
        super().__init__(initialize_variables=False)
        self._graph = graph
        self._reads = {}

    def add_update(self, update):
        variable, _ = update
        raise ValueError(
            f"Variable {variable.path} was assigned while a decode plan "
            "reads it once for the whole loop, where the assignment would "
            "be lost. Assign it outside the plan's scope."
        )

    def get_current_value(self, variable):
        outer = self.original_scope  # an enclosing stateless call's values
        given = None if outer is None else outer.get_current_value(variable)
        if given is not None:
            return given
        key = (id(variable), variable.dtype)  # `dtype` is the autocast one
        if key not in self._reads:
            with self._graph.as_default(), keras.StatelessScope():
                self._reads[key] = tf.convert_to_tensor(variable.value)
        return self._reads[key]

    def derived(self, variable, key, compute):
        """`compute(variable's value)`, computed once per `key` in the
        scope's graph."""
        key = (key, id(variable), variable.dtype)
        if key not in self._reads:
            value = self.get_current_value(variable)
            with self._graph.as_default():
                self._reads[key] = compute(value)
        return self._reads[key]


class DecodePlan:
    """A model's weights laid out for decoding; see the module docstring.

    Build it inside the traced function that runs the decode loop, before
    the loop. Layers call `project`, `head`, `lookup` and `write`; `scope()`
    is entered around every forward pass that uses the plan.

    Args:
        layout: a `Layout`.
        in_place: the cache write is in place (`tflm.layers.kv_cache`):
            only for a loop that owns its cache (`Decoding.own`).
    """

    def __init__(self, layout: Layout, in_place: bool = False, reads=None):
        self.layout = layout
        self.in_place = bool(in_place)
        if reads is None and not tf.executing_eagerly():
            reads = WeightReads(tf.compat.v1.get_default_graph())
        self._reads = reads

    def writing_in_place(self) -> DecodePlan:
        """The same plan (and reads) with in-place cache writes."""
        return DecodePlan(self.layout, True, self._reads)

    def scope(self):
        """The stateless scope that reads each weight once (a no-op
        eagerly)."""
        if self._reads is None:
            return contextlib.nullcontext()
        return self._reads

    def _derived(self, variable, key, compute):
        if self._reads is None:
            return compute(tf.convert_to_tensor(variable))
        return self._reads.derived(variable, key, compute)

    def _value(self, variable):
        if self._reads is None:
            return tf.convert_to_tensor(variable)
        return self._reads.get_current_value(variable)

    def project(self, layer, x):
        """`layer(x)` for a projection and `x` `(rows, in)`."""
        stored = self.layout.stored
        kept = None if stored is None else stored.kernel(layer)
        if kept is not None and kept.num_blocks > 1:
            n = kept.num_blocks
            kernel_t = self._derived(
                kept.kernel_t, ("blocks", n), lambda v: split_rows(v, n)
            )
        elif kept is not None:
            kernel_t = self._value(kept.kernel_t)
        elif self._transposes(layer, x):
            kernel_t = self._derived(layer.kernel, "transposed", tf.transpose)
        else:
            return layer(x)
        bias = None if layer.bias is None else self._value(layer.bias)
        return times_transposed(x, kernel_t, bias)

    def _transposes(self, layer, x) -> bool:
        if not self.layout.relayout or x.shape.rank != 2:
            return False
        if not plain_dense(layer):
            return False
        narrowing = layer.kernel.shape[0] > layer.kernel.shape[1]
        return narrowing and (self.layout.backend == "graph" or x.shape[0] == 1)

    def head(self, embedding, hidden):
        """`embedding(hidden, reverse=True)`: logits in the head's dtype."""
        stored = self.layout.stored
        if stored is not None and stored.table_t is not None:
            table_t = self._value(stored.table_t)
        elif (
            self.layout.backend == "graph"
            and self.layout.relayout
            and plain_table(embedding)
            and head_dtype(embedding) == embedding.embeddings.dtype
        ):  # (a mixed policy would cast the whole table at every step)
            table_t = self._derived(
                embedding.embeddings, "transposed", tf.transpose
            )
        else:
            return embedding(hidden, reverse=True)
        return tf.matmul(tf.cast(hidden, table_t.dtype), table_t)

    def lookup(self, embedding, ids):
        """`embedding(ids)`: `(..., D)` in the embedding's compute dtype."""
        stored = self.layout.stored
        if stored is None or stored.table_t is None:
            return embedding(ids)
        table_t = self._value(stored.table_t)
        columns = tf.gather(table_t, tf.cast(ids, tf.int32), axis=1)
        rank = ids.shape.rank
        x = tf.transpose(columns, [*range(1, rank + 1), 0])
        return tf.cast(x, embedding.compute_dtype)

    def write(self, cache, key, value, index):
        """`kv_cache.update`, in place where this plan says."""
        return kv_cache.update(cache, key, value, index, self.in_place)
