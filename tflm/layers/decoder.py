"""Pre-norm transformer decoder block."""

from __future__ import annotations

import keras

from tflm.layers import attention as attention_lib
from tflm.layers import fused
from tflm.layers import kv_cache

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "swiglu")


def make_norm(norm: str, epsilon: float, dtype, name: str):
    """A normalization layer by name; statistics run in float32."""
    if norm == "layernorm":
        return fused.LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)
    if norm == "rmsnorm":
        return keras.layers.RMSNormalization(
            epsilon=epsilon, dtype=dtype, name=name
        )
    raise ValueError(f"norm must be one of {NORMS}. Received: norm={norm!r}.")


@keras.saving.register_keras_serializable(package="tflm")
class DecoderBlock(keras.layers.Layer):
    """Pre-norm GPT decoder block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

    Args:
        num_heads: int. Must divide the hidden size.
        intermediate_dim: int. MLP width.
        num_key_value_heads: int. Defaults to `num_heads`.
        norm: `"layernorm"` (GPT-2) or `"rmsnorm"` (LLaMA).
        activation: `"gelu"` (tanh approximation, as GPT-2) or `"swiglu"`
            (`silu(gate) * up`, as LLaMA; `mlp_in` holds gate and up fused).
        use_bias: bool. Biases on every projection. Defaults to `True`.
        head_dim, qkv_bias, output_bias, rope_scaling: see
            `CausalSelfAttention`.
        mlp_bias: bool. Biases on the MLP's projections; defaults to
            `use_bias`.
        fused_qkv: bool. See `CausalSelfAttention`.
        use_rotary: bool. Rotary position embedding in attention.
        rope_max_wavelength: float. RoPE base.
        dropout: float. Residual and attention dropout. Defaults to `0.0`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        kernel_initializer: Keras initializer. Defaults to normal(0.02).
        **kwargs: Passed to `keras.layers.Layer` (`name`, `dtype`).

    Call arguments:
        x: float `(B, T, D)`.
        padding_mask: optional `(B, T)`, or `(B, S)` over cache slots.
        cache: optional `(2, B, K, S, H)`; returned updated.
        cache_index: int scalar, position of `x` in `cache`.
        position_ids: optional int `(B, T)`, for rotary embedding.
        attention_mask: optional bool `(B|1, 1, T, S)`; see
            `CausalSelfAttention`.
        training: bool, enables dropout.
        plan: optional `tflm.models.decode_plan.DecodePlan` (see
            `CausalSelfAttention`).

    Returns:
        `(B, T, D)`, or `(x, cache)` when a cache was passed in.

    Example:
    >>> import numpy as np
    >>> block = DecoderBlock(num_heads=2, intermediate_dim=16)
    >>> tuple(block(np.zeros((1, 4, 8))).shape)
    (1, 4, 8)
    """

    def __init__(
        self,
        num_heads: int,
        intermediate_dim: int,
        num_key_value_heads: int | None = None,
        norm: str = "layernorm",
        activation: str = "gelu",
        use_bias: bool = True,
        fused_qkv: bool = True,
        use_rotary: bool = False,
        rope_max_wavelength: float = 10000.0,
        dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        kernel_initializer=None,
        head_dim: int | None = None,
        qkv_bias: bool | None = None,
        output_bias: bool | None = None,
        mlp_bias: bool | None = None,
        rope_scaling: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}. Received: {norm=}.")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}. Received: "
                f"{activation=}."
            )
        if intermediate_dim <= 0:
            raise ValueError(
                f"intermediate_dim must be positive. Received: "
                f"{intermediate_dim=}."
            )
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.num_key_value_heads = int(
            num_heads if num_key_value_heads is None else num_key_value_heads
        )
        self.norm = norm
        self.activation = activation
        self.use_bias = bool(use_bias)
        self.mlp_bias = self.use_bias if mlp_bias is None else bool(mlp_bias)
        self.fused_qkv = bool(fused_qkv)
        self.use_rotary = bool(use_rotary)
        self.rope_max_wavelength = float(rope_max_wavelength)
        self.dropout = float(dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or attention_lib.default_initializer()
        )
        # Validate head counts now rather than at build time.
        self._attention_kwargs = dict(
            num_heads=self.num_heads,
            num_key_value_heads=self.num_key_value_heads,
            use_bias=self.use_bias,
            fused_qkv=self.fused_qkv,
            use_rotary=self.use_rotary,
            rope_max_wavelength=self.rope_max_wavelength,
            dropout=self.dropout,
            head_dim=head_dim,
            qkv_bias=qkv_bias,
            output_bias=output_bias,
            rope_scaling=rope_scaling,
        )
        checked = attention_lib.CausalSelfAttention(**self._attention_kwargs)
        self.head_dim = checked.head_dim_arg
        self.qkv_bias = checked.qkv_bias
        self.output_bias = checked.output_bias
        self.rope_scaling = checked.rope_scaling
        self._attention_kwargs = {
            **self._attention_kwargs,
            "qkv_bias": self.qkv_bias,
            "output_bias": self.output_bias,
            "rope_scaling": self.rope_scaling,
        }

    def _initializer(self):
        return keras.initializers.get(
            keras.initializers.serialize(self.kernel_initializer)
        )

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        policy = self.dtype_policy
        eps = self.layer_norm_epsilon
        self.attention_norm = make_norm(
            self.norm, eps, policy, "attention_norm"
        )
        self.attention = attention_lib.CausalSelfAttention(
            **self._attention_kwargs,
            kernel_initializer=self._initializer(),
            dtype=policy,
            name="attention",
        )
        self.mlp_norm = make_norm(self.norm, eps, policy, "mlp_norm")
        width = self.intermediate_dim * (
            2 if self.activation == "swiglu" else 1
        )
        self.mlp_in = keras.layers.Dense(
            width,
            use_bias=self.mlp_bias,
            kernel_initializer=self._initializer(),
            dtype=policy,
            name="mlp_in",
        )
        self.mlp_out = keras.layers.Dense(
            hidden_dim,
            use_bias=self.mlp_bias,
            kernel_initializer=self._initializer(),
            dtype=policy,
            name="mlp_out",
        )
        self.residual_dropout = keras.layers.Dropout(
            self.dropout, dtype=policy, name="residual_dropout"
        )
        for layer in (self.attention_norm, self.attention, self.mlp_norm):
            layer.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def _mlp(self, x, training=None, plan=None):
        shape = kv_cache.static_shape(x)
        # On `(B*T, D)` each projection is one matmul (see attention).
        h = attention_lib.project(
            self.mlp_in, keras.ops.reshape(x, (-1, shape[-1])), plan
        )
        if self.activation == "swiglu":
            gate, up = keras.ops.split(h, 2, axis=-1)
            h = keras.ops.silu(gate) * up
        else:
            h = fused.gelu(h, training)
        h = attention_lib.project(self.mlp_out, h, plan)
        return attention_lib.reshape(h, shape)

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
        h = self.attention(
            self.attention_norm(x),
            padding_mask=padding_mask,
            cache=cache,
            cache_index=cache_index,
            position_ids=position_ids,
            attention_mask=attention_mask,
            training=training,
            plan=plan,
        )
        if cache is not None:
            h, cache = h
        x = x + self.residual_dropout(h, training=training)
        h = self._mlp(self.mlp_norm(x), training, plan)
        x = x + self.residual_dropout(h, training=training)
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            num_key_value_heads=self.num_key_value_heads,
            norm=self.norm,
            activation=self.activation,
            use_bias=self.use_bias,
            head_dim=self.head_dim,
            qkv_bias=self.qkv_bias,
            output_bias=self.output_bias,
            mlp_bias=self.mlp_bias,
            rope_scaling=self.rope_scaling,
            fused_qkv=self.fused_qkv,
            use_rotary=self.use_rotary,
            rope_max_wavelength=self.rope_max_wavelength,
            dropout=self.dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(
                self.kernel_initializer
            ),
        )
        return config
