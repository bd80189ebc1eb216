"""Causal multi-head self-attention with grouped-query heads and a KV cache."""

from __future__ import annotations

import keras
import tensorflow as tf

from tflm.layers import fused
from tflm.layers import kv_cache
from tflm.layers import masks
from tflm.layers import rotary

_MASKED = fused.MASKED  # the fused and plain softmax mask alike


def default_initializer():
    """GPT-2's initializer: a normal with stddev 0.02."""
    return keras.initializers.RandomNormal(stddev=0.02)


def reshape(x, shape):
    """`keras.ops.reshape`, with `-1` for the one dimension of `shape` that
    is unknown at trace time (a batch that a signature leaves open): the new
    shape is then a constant, with no `Shape`/`StridedSlice`/`Pack` ops to
    build it at every call (every decode step, in every layer)."""
    dynamic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if len(dynamic) == 1 and all(d != -1 for d in shape if isinstance(d, int)):
        shape = tuple(-1 if i == dynamic[0] else d for i, d in enumerate(shape))
    return keras.ops.reshape(x, shape)


def project(layer, x, plan=None):
    """`layer(x)`, or as a decode plan multiplies it (`plan.project`)."""
    return layer(x) if plan is None else plan.project(layer, x)


def _small_softmax(scores):
    """Softmax over the last axis from elementwise ops. For one query row
    per head (a decode step), the plain graph's fused softmax kernel costs
    several times these five small ops."""
    shifted = scores - keras.ops.max(scores, axis=-1, keepdims=True)
    exp = keras.ops.exp(shifted)
    return exp / keras.ops.sum(exp, axis=-1, keepdims=True)


def _reduced(q, k, training):
    """Whether attention's scores are a product in bfloat16: in training,
    with q and k in bfloat16 (`mixed_bfloat16`). float16 keeps the float32
    product, since its unscaled `q·kᵀ` could overflow."""
    return training is True and all(
        keras.backend.standardize_dtype(t.dtype) == "bfloat16" for t in (q, k)
    )


def _scores(q, k, scale, reduced=False):
    """`scale · q·kᵀ`: q `(B, K, R, H)`, k `(B, K, S, H)` → `(B, K, R, S)`.

    With `reduced` (see `_reduced`), `q·kᵀ` alone (the caller scales it in
    float32, since a bfloat16 `scale` is rounded) runs in q's dtype, as
    keras-hub's and PyTorch autocast's attention do: oneDNN's bfloat16
    batched matmul is about twice its float32 one, forward and in both
    gradient products; the scores are cast up for masking and softmax,
    which stay float32. Otherwise (inference, generation, exports) q and k
    are cast up first, and the scores are a float32 product.
    """
    # `transpose_b`, not a transposed k: XLA copied the whole of k,
    # transposed, at every decode step (the plain graph folds either form
    # into one batched matmul).
    if reduced:  # unscaled: the float32 softmax applies `scale`
        return tf.matmul(q, k, transpose_b=True)
    q32 = keras.ops.cast(q, "float32") * scale
    return tf.matmul(q32, keras.ops.cast(k, "float32"), transpose_b=True)


@keras.saving.register_keras_serializable(package="tflm")
class CausalSelfAttention(keras.layers.Layer):
    """Causal self-attention: multi-head, grouped-query or multi-query.

    Keys and values use `num_key_value_heads` heads, each shared by
    `num_heads // num_key_value_heads` query heads; they are never repeated
    in memory. Softmax runs in float32 under mixed precision; the scores
    are a float32 product too, except in training, where q·kᵀ runs in the
    compute dtype (see `_scores`).

    Args:
        num_heads: int. Query heads `N`; must divide the hidden size.
        num_key_value_heads: int. Key/value heads `K`; must divide
            `num_heads`. Defaults to `num_heads` (plain multi-head).
        use_bias: bool. Biases on the projections. Defaults to `True`.
        head_dim: int. The head size `H`; defaults to the hidden size over
            `num_heads` (some checkpoints use another, e.g. Gemma's).
        qkv_bias: bool. Biases on the query, key and value projections
            (Qwen2 has them, and no output bias); defaults to `use_bias`.
        output_bias: bool. A bias on the output projection; defaults to
            `use_bias`.
        fused_qkv: bool. One `query_key_value` projection instead of
            separate `query`, `key`, `value`. Defaults to `True`.
        use_rotary: bool. Rotary position embedding on queries and keys.
        rope_max_wavelength: float. RoPE base. Defaults to `10000.0`.
        rope_scaling: dict. Scaled rotary frequencies (`tflm.layers.rotary`:
            `linear` or `llama3`), or `None`.
        dropout: float. Dropout on attention probabilities.
        kernel_initializer: Keras initializer. Defaults to normal(0.02).
        **kwargs: Passed to `keras.layers.Layer` (`name`, `dtype`).

    Call arguments:
        x: float `(B, T, D)`.
        padding_mask: optional `(B, T)`, or `(B, S)` over the cache slots when
            a cache is given; true where a token is real.
        attention_mask: optional bool `(B|1, 1, T, S)`, true where query `t`
            may see key `s`; replaces the causal and padding masks (a model
            computes it once for all its layers).
        cache: optional `(2, B, K, S, H)`; returned updated.
        cache_index: int scalar, slot of `x`'s first token in `cache`.
        position_ids: optional int `(B, T)` for rotary embedding; defaults to
            `cache_index + arange(T)`.
        training: bool, enables dropout.
        plan: optional `tflm.models.decode_plan.DecodePlan`: how a decode
            step multiplies the projections and writes the cache.

    Returns:
        `(B, T, D)`, or `(output, cache)` when a cache was passed in.

    Example:
    >>> import numpy as np
    >>> tuple(CausalSelfAttention(num_heads=2)(np.zeros((1, 4, 8))).shape)
    (1, 4, 8)
    """

    def __init__(
        self,
        num_heads: int,
        num_key_value_heads: int | None = None,
        use_bias: bool = True,
        fused_qkv: bool = True,
        use_rotary: bool = False,
        rope_max_wavelength: float = 10000.0,
        dropout: float = 0.0,
        kernel_initializer=None,
        head_dim: int | None = None,
        qkv_bias: bool | None = None,
        output_bias: bool | None = None,
        rope_scaling: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if head_dim is not None and (
            isinstance(head_dim, bool)
            or not isinstance(head_dim, int)
            or head_dim <= 0
        ):
            raise ValueError(
                f"head_dim must be a positive int or None. Received: "
                f"head_dim={head_dim!r}."
            )
        if num_key_value_heads is None:
            num_key_value_heads = num_heads
        if num_heads <= 0 or num_key_value_heads <= 0:
            raise ValueError(
                "num_heads and num_key_value_heads must be positive. "
                f"Received: num_heads={num_heads}, "
                f"num_key_value_heads={num_key_value_heads}."
            )
        if num_heads % num_key_value_heads:
            raise ValueError(
                "num_key_value_heads must divide num_heads (1 for multi-query, "
                f"num_heads for multi-head). Received: num_heads={num_heads}, "
                f"num_key_value_heads={num_key_value_heads}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: {dropout=}")
        self.num_heads = int(num_heads)
        self.num_key_value_heads = int(num_key_value_heads)
        self.use_bias = bool(use_bias)
        self.head_dim_arg = head_dim
        self.qkv_bias = self.use_bias if qkv_bias is None else bool(qkv_bias)
        self.output_bias = (
            self.use_bias if output_bias is None else bool(output_bias)
        )
        self.rope_scaling = rotary.check_rope_scaling(rope_scaling)
        self.fused_qkv = bool(fused_qkv)
        self.use_rotary = bool(use_rotary)
        self.rope_max_wavelength = float(rope_max_wavelength)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if self.head_dim_arg is None and hidden_dim % self.num_heads:
            raise ValueError(
                "num_heads must divide the hidden size. Received: "
                f"num_heads={self.num_heads}, hidden size={hidden_dim}."
            )
        self.head_dim = self.head_dim_arg or hidden_dim // self.num_heads
        q_dim = self.num_heads * self.head_dim
        kv_dim = self.num_key_value_heads * self.head_dim
        if self.use_rotary:
            rotary.rope_inverse_frequencies(self.head_dim)  # validates H
        if self.fused_qkv:
            self.query_key_value = self._dense(
                q_dim + 2 * kv_dim, "query_key_value", self.qkv_bias
            )
            self.query_key_value.build(input_shape)
        else:
            self.query = self._dense(q_dim, "query", self.qkv_bias)
            self.key = self._dense(kv_dim, "key", self.qkv_bias)
            self.value = self._dense(kv_dim, "value", self.qkv_bias)
            for layer in (self.query, self.key, self.value):
                layer.build(input_shape)
        self.output_dense = self._dense(hidden_dim, "output", self.output_bias)
        self.output_dense.build(tuple(input_shape[:-1]) + (q_dim,))
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )

    def _dense(self, units, name, use_bias):
        return keras.layers.Dense(
            units,
            use_bias=use_bias,
            kernel_initializer=keras.initializers.get(
                keras.initializers.serialize(self.kernel_initializer)
            ),
            dtype=self.dtype_policy,
            name=name,
        )

    def _project(self, x, batch, length, plan=None):
        """Returns q `(B, N, T, H)`, k and v `(B, K, T, H)`.

        Projections run on `(B*T, D)` so that each is one matmul (a rank-3
        Dense becomes a `tensordot` with a dozen shape ops per call).
        """
        n, k, h = self.num_heads, self.num_key_value_heads, self.head_dim
        x = reshape(x, (-1, x.shape[-1]))
        # One position (a decode step): `(B, 1, N, H)` and `(B, N, 1, H)` are
        # the same memory, so heads need slices and reshapes, no transpose.
        one = isinstance(length, int) and length == 1
        if self.fused_qkv and n == k and not one:
            qkv = project(self.query_key_value, x, plan)
            qkv = reshape(qkv, (batch, length, 3, n, h))
            qkv = keras.ops.transpose(qkv, (2, 0, 3, 1, 4))
            return keras.ops.unstack(qkv, 3)
        if self.fused_qkv:
            qkv = project(self.query_key_value, x, plan)
            # Slices, not `split` (which builds its sizes from the shape).
            q = qkv[:, : n * h]
            key = qkv[:, n * h : (n + k) * h]
            v = qkv[:, (n + k) * h :]
        else:
            q, key, v = (
                project(layer, x, plan)
                for layer in (self.query, self.key, self.value)
            )

        def heads(t, num):
            if one:
                return reshape(t, (batch, num, 1, h))
            t = reshape(t, (batch, length, num, h))
            return keras.ops.transpose(t, (0, 2, 1, 3))

        return heads(q, n), heads(key, k), heads(v, k)

    def _attend(self, q, k, v, mask, training):
        """q `(B, N, T, H)`, k/v `(B, K, S, H)`, mask `(B|1, 1, T, S)`."""
        n, kv, h = self.num_heads, self.num_key_value_heads, self.head_dim
        groups = n // kv
        batch, _, length, _ = kv_cache.static_shape(q)
        # Grouped query heads become extra rows of one matmul per kv head.
        q = reshape(q, (batch, kv, groups * length, h))
        reduced = _reduced(q, k, training)
        scale = 1.0 / h**0.5
        scores = _scores(q, k, scale, reduced)
        if groups > 1:
            scores = reshape(scores, (batch, kv, groups, length, -1))
            mask = mask[:, :, None]
        if reduced and fused.enabled():
            # (In float32 training, oneDNN's softmax measured faster.)
            probs = fused.masked_softmax(scores, mask, scale)
        else:
            scores = keras.ops.cast(scores, "float32")
            if reduced:
                scores = scores * scale
            scores = keras.ops.where(mask, scores, _MASKED)
            if isinstance(length, int) and length == 1:
                probs = _small_softmax(scores)
            else:
                probs = keras.ops.softmax(scores, axis=-1)
        probs = self.dropout_layer(probs, training=training)
        probs = keras.ops.cast(probs, v.dtype)
        if groups > 1:
            probs = reshape(probs, (batch, kv, groups * length, -1))
        out = keras.ops.matmul(probs, v)
        return reshape(out, (batch, n, length, h))

    def call(
        self,
        x,
        padding_mask=None,
        cache=None,
        cache_index=None,
        position_ids=None,
        attention_mask=None,
        training=None,
        plan=None,
    ):
        batch, length, hidden = kv_cache.static_shape(x)
        q, k, v = self._project(x, batch, length, plan)
        offset = 0 if cache_index is None else cache_index
        if self.use_rotary:
            if position_ids is None:
                position_ids = (
                    keras.ops.arange(length, dtype="int32") + offset
                )[None]
            cos, sin = rotary.rope_tables(
                position_ids,
                self.head_dim,
                self.rope_max_wavelength,
                self.rope_scaling,
            )
            cos, sin = cos[:, None], sin[:, None]
            q = rotary.apply_rope(q, cos, sin)
            k = rotary.apply_rope(k, cos, sin)
        if cache is not None:
            write = kv_cache.update if plan is None else plan.write
            cache = write(cache, k, v, offset)
            k, v = cache[0], cache[1]
        if attention_mask is None:
            attention_mask = masks.attention_mask(
                length, keras.ops.shape(k)[2], offset, padding_mask
            )
        out = self._attend(q, k, v, attention_mask, training)
        if not (isinstance(length, int) and length == 1):
            out = keras.ops.transpose(out, (0, 2, 1, 3))
        out = reshape(out, (-1, self.num_heads * self.head_dim))
        out = project(self.output_dense, out, plan)
        out = reshape(out, (batch, length, hidden))
        return out if cache is None else (out, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            num_key_value_heads=self.num_key_value_heads,
            use_bias=self.use_bias,
            head_dim=self.head_dim_arg,
            qkv_bias=self.qkv_bias,
            output_bias=self.output_bias,
            rope_scaling=self.rope_scaling,
            fused_qkv=self.fused_qkv,
            use_rotary=self.use_rotary,
            rope_max_wavelength=self.rope_max_wavelength,
            dropout=self.dropout,
            kernel_initializer=keras.initializers.serialize(
                self.kernel_initializer
            ),
        )
        return config
