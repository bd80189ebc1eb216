"""The decoder-only transformer backbone."""

from __future__ import annotations

import keras

from tflm.layers import attention as attention_lib
from tflm.layers import decoder as decoder_lib
from tflm.layers import embedding as embedding_lib
from tflm.layers import masks
from tflm.models import presets as presets_lib

POSITION_EMBEDDINGS = ("learned", "rotary")


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"{name} must be a positive integer. Received: "
                f"{name}={value!r}."
            )


def position_ids_from_mask(padding_mask):
    """Positions counting only real tokens: `cumsum(mask) - 1`, floored at 0.

    With left-padded prompts this gives every row the positions it would have
    alone; with no padding it is `arange(T)`.
    """
    mask = keras.ops.cast(padding_mask, "int32")
    return keras.ops.maximum(keras.ops.cumsum(mask, axis=-1) - 1, 0)


@keras.saving.register_keras_serializable(package="tflm")
class Backbone(keras.Model):
    """GPT-style decoder: token ids and padding mask in, hidden states out.

    Args:
        vocabulary_size: int. `V`.
        num_layers: int. Number of `DecoderBlock`s.
        num_heads: int. Attention heads; must divide `hidden_dim`.
        hidden_dim: int. `D`.
        intermediate_dim: int. MLP width.
        max_sequence_length: int. The context.
        num_key_value_heads: int. Grouped-query heads; defaults to
            `num_heads`.
        norm: `"layernorm"` or `"rmsnorm"`.
        activation: `"gelu"` or `"swiglu"`.
        position_embedding: `"learned"` or `"rotary"`.
        rope_max_wavelength: float. RoPE base.
        use_bias: bool. Biases in projections.
        head_dim: int. The head size, when not `hidden_dim // num_heads`.
        qkv_bias, output_bias, mlp_bias: bool. Biases on the query/key/value,
            attention output and MLP projections; each defaults to
            `use_bias` (Qwen2: `qkv_bias=True` with `use_bias=False`).
        rope_scaling: dict. Scaled rotary frequencies (`linear` or `llama3`,
            see `tflm.layers.rotary`), or `None`.
        fused_qkv: bool. One fused QKV projection per block.
        tie_embeddings: bool. Output projection reuses the token embedding.
        dropout: float.
        layer_norm_epsilon: float.
        dtype: dtype policy name, e.g. `"mixed_bfloat16"`.
        **kwargs: Passed to `keras.Model` (`name`).

    Call arguments:
        inputs: dict with `token_ids` int `(B, T)` and `padding_mask` `(B, T)`.

    Returns:
        Hidden states `(B, T, D)` in the compute dtype.

    Example:
    >>> import numpy as np
    >>> backbone = Backbone.from_preset("tiny")
    >>> x = {"token_ids": np.ones((1, 4), "int32"),
    ...      "padding_mask": np.ones((1, 4), "int32")}
    >>> backbone(x).shape
    TensorShape([1, 4, 8])
    """

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        max_sequence_length: int,
        num_key_value_heads: int | None = None,
        norm: str = "layernorm",
        activation: str = "gelu",
        position_embedding: str = "learned",
        rope_max_wavelength: float = 10000.0,
        use_bias: bool = True,
        fused_qkv: bool = True,
        tie_embeddings: bool = True,
        dropout: float = 0.0,
        layer_norm_epsilon: float = 1e-5,
        head_dim: int | None = None,
        qkv_bias: bool | None = None,
        output_bias: bool | None = None,
        mlp_bias: bool | None = None,
        rope_scaling: dict | None = None,
        dtype=None,
        **kwargs,
    ):
        _check_positive(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            max_sequence_length=max_sequence_length,
        )
        if head_dim is None and hidden_dim % num_heads:
            raise ValueError(
                "num_heads must divide hidden_dim. Received: "
                f"hidden_dim={hidden_dim}, num_heads={num_heads}."
            )
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding must be one of {POSITION_EMBEDDINGS}. "
                f"Received: position_embedding={position_embedding!r}."
            )
        initializer = attention_lib.default_initializer
        self.token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=tie_embeddings,
            embeddings_initializer=initializer(),
            dtype=dtype,
            name="token_embedding",
        )
        # Keras' embeddings never autocast their table when called inside
        # another layer (a model), though they do when called alone: the
        # tied head of a mixed-precision CausalLM then cast its bfloat16
        # hidden states up and multiplied in float32, the three largest
        # matmuls of a train step at about half oneDNN's bfloat16 speed
        # (docs/performance.md). Autocast makes the head
        # run in the compute dtype wherever it is called; the lookup gives
        # the same values either way.
        self.token_embedding.autocast = True
        self.position_embedding = None
        if position_embedding == "learned":
            self.position_embedding = embedding_lib.PositionEmbedding(
                max_sequence_length,
                hidden_dim,
                initializer=keras.initializers.RandomNormal(stddev=0.01),
                dtype=dtype,
                name="position_embedding",
            )
        self.blocks = [
            decoder_lib.DecoderBlock(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                num_key_value_heads=num_key_value_heads,
                norm=norm,
                activation=activation,
                use_bias=use_bias,
                head_dim=head_dim,
                qkv_bias=qkv_bias,
                output_bias=output_bias,
                mlp_bias=mlp_bias,
                rope_scaling=rope_scaling,
                fused_qkv=fused_qkv,
                use_rotary=position_embedding == "rotary",
                rope_max_wavelength=rope_max_wavelength,
                dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=dtype,
                name=f"decoder_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = decoder_lib.make_norm(
            norm, layer_norm_epsilon, dtype, "final_norm"
        )
        self.embedding_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embedding_dropout"
        )

        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
        positions = position_ids_from_mask(padding_mask)
        x = self._embed(token_ids, positions)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, position_ids=positions)
        x = self.final_norm(x)
        super().__init__(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask},
            outputs=x,
            dtype=dtype,
            **kwargs,
        )
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.num_key_value_heads = (
            num_heads if num_key_value_heads is None else num_key_value_heads
        )
        self.norm = norm
        self.activation = activation
        self.position_embedding_type = position_embedding
        self.rope_max_wavelength = rope_max_wavelength
        self.use_bias = use_bias
        self.fused_qkv = fused_qkv
        self.tie_embeddings = tie_embeddings
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        block = self.blocks[0]
        self.qkv_bias = block.qkv_bias
        self.output_bias = block.output_bias
        self.mlp_bias = block.mlp_bias
        self.rope_scaling = block.rope_scaling
        self.head_dim = head_dim or hidden_dim // num_heads
        self._head_dim_arg = head_dim

    def _embed(
        self, token_ids, position_ids, training=None, decode=False, plan=None
    ):
        if plan is None:
            x = self.token_embedding(token_ids)
        else:
            x = plan.lookup(self.token_embedding, token_ids)
        if self.position_embedding is not None:
            if decode:
                x = x + self.position_embedding.lookup(position_ids)
            else:
                x = x + self.position_embedding(position_ids)
        return self.embedding_dropout(x, training=training)

    def init_cache(self, batch_size, cache_length=None):
        """Zero KV caches: a list of `(2, B, K, S, H)`, one per layer."""
        length = self.max_sequence_length
        if cache_length is not None:
            length = cache_length
        shape = (2, batch_size, self.num_key_value_heads, length, self.head_dim)
        dtype = self.token_embedding.compute_dtype
        return [keras.ops.zeros(shape, dtype) for _ in self.blocks]

    def call_with_cache(
        self,
        token_ids,
        cache,
        cache_index,
        padding_mask,
        position_ids,
        plan=None,
    ):
        """Runs `token_ids (B, T)` at slot `cache_index` of the caches.

        Args:
            token_ids: int `(B, T)`.
            cache: list of per-layer caches from `init_cache`.
            cache_index: int scalar, the cache slot of the first token.
            padding_mask: `(B, S)`, true where a cache slot holds a real token
                (including the `T` being written now).
            position_ids: int `(B, T)`, each token's position.
            plan: optional `tflm.models.decode_plan.DecodePlan`, the weight
                layouts and cache write of a decode step; its `scope()`
                must be entered around the call.

        Returns:
            `(hidden (B, T, D), cache)`.
        """
        # Rows that already stopped keep stepping with the batch; clipping
        # keeps their (ignored) positions inside the table.
        position_ids = keras.ops.clip(
            position_ids, 0, self.max_sequence_length - 1
        )
        x = self._embed(token_ids, position_ids, decode=True, plan=plan)
        # One mask for all layers (not one per layer): fewer ops per step.
        attention_mask = masks.attention_mask(
            keras.ops.shape(token_ids)[1],
            keras.ops.shape(cache[0])[3],
            cache_index,
            padding_mask,
        )
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x, layer_cache = block(
                x,
                attention_mask=attention_mask,
                cache=layer_cache,
                cache_index=cache_index,
                position_ids=position_ids,
                plan=plan,
            )
            new_cache.append(layer_cache)
        return self.final_norm(x), new_cache

    def get_config(self):
        return {
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "num_key_value_heads": self.num_key_value_heads,
            "norm": self.norm,
            "activation": self.activation,
            "position_embedding": self.position_embedding_type,
            "rope_max_wavelength": self.rope_max_wavelength,
            "use_bias": self.use_bias,
            "fused_qkv": self.fused_qkv,
            "tie_embeddings": self.tie_embeddings,
            "dropout": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "head_dim": self._head_dim_arg,
            "qkv_bias": self.qkv_bias,
            "output_bias": self.output_bias,
            "mlp_bias": self.mlp_bias,
            "rope_scaling": self.rope_scaling,
            "dtype": keras.dtype_policies.serialize(
                self.token_embedding.dtype_policy
            ),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> Backbone:
        """Builds a backbone from a preset name in `tflm.models.PRESETS`."""
        return cls(**presets_lib.get_preset(preset, **overrides))
