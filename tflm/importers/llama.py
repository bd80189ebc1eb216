"""Llama-family checkpoints (Llama 2/3.x, SmolLM2, TinyLlama, Qwen2/2.5,
Mistral) in the Hugging Face layout, mapped onto `Backbone` arguments.

All three are one decoder: RMSNorm before attention and MLP, rotary
positions ("rotate half", as Hugging Face stores q/k), grouped-query heads,
a SwiGLU MLP. They differ only in what their `config.json` says: biases
(`attention_bias` on q/k/v/o for Llama, q/k/v always for Qwen2), the head
size, rope scaling, a tied head, and Mistral's sliding window. The config
is read as transformers 4.x writes it (`rope_theta`, `rope_scaling`,
`torch_dtype`) and as 5.x does (`rope_parameters`, `dtype`).

A sliding window is honoured by capping the context at the window: every
query then sees at most `window` keys, which is the window's attention
exactly. A longer `--max-context` is refused.
"""

from __future__ import annotations

from typing import Any

from tflm import errors
from tflm.importers import checkpoint as checkpoint_lib
from tflm.layers import rotary

MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
ACTIVATIONS = ("silu", "swish")
# Tensors of a checkpoint that are buffers, not weights.
IGNORED = ("rotary_emb.inv_freq",)


def _rope(config: dict[str, Any], path: str) -> tuple[float, dict | None]:
    """`(rope_max_wavelength, rope_scaling)` from 4.x or 5.x fields."""
    parameters = config.get("rope_parameters")
    if isinstance(parameters, dict):  # transformers 5.x
        theta = parameters.get("rope_theta", config.get("rope_theta"))
        scaling = dict(parameters)
    else:
        theta, scaling = config.get("rope_theta"), config.get("rope_scaling")
    try:
        scaling = rotary.check_rope_scaling(scaling)
    except ValueError as err:
        raise errors.InputError(f"{path}: {err}") from None
    return float(theta if theta is not None else 10000.0), scaling


def context(config: dict[str, Any], path: str, max_context: int | None):
    """The context tflm runs the model at: its positions, capped by a
    sliding window, or `max_context` when that is no longer.

    Raises:
        InputError: `max_context` above what the checkpoint can attend to.
    """
    positions = int(config.get("max_position_embeddings") or 2048)
    window = config.get("sliding_window")
    if config.get("model_type") == "qwen2" and not config.get(
        "use_sliding_window", False
    ):
        window = None
    limit, why = positions, "max_position_embeddings"
    if isinstance(window, int) and 0 < window < positions:
        limit, why = window, "sliding_window"
    if max_context is None:
        return limit
    if not isinstance(max_context, int) or max_context <= 0:
        raise errors.InputError(
            f"--max-context must be a positive integer. Received: "
            f"{max_context!r}."
        )
    if max_context > limit:
        raise errors.InputError(
            f"--max-context {max_context} is above what {path} can attend to "
            f"({why} = {limit}). Pass --max-context {limit} or less."
        )
    return max_context


def backbone_args(
    config: dict[str, Any], path: str, max_context: int | None = None
) -> dict[str, Any]:
    """`Backbone` arguments from a Llama, Qwen2 or Mistral `config.json`.

    Raises:
        InputError: naming `path` and the field, for a value tflm cannot
            run exactly.
    """
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise errors.InputError(
            f"{path}: model_type {model_type!r} is not a Llama-family model "
            f"({', '.join(MODEL_TYPES)})."
        )
    activation = config.get("hidden_act", "silu")
    if activation not in ACTIVATIONS:
        raise errors.InputError(
            f"{path}: hidden_act is {activation!r}; the {model_type} MLP "
            "tflm runs is SwiGLU (silu)."
        )
    theta, scaling = _rope(config, path)
    sizes = {
        key: config.get(key)
        for key in (
            "vocab_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_size",
            "intermediate_size",
        )
    }
    sizes["num_key_value_heads"] = (
        config.get("num_key_value_heads") or sizes["num_attention_heads"]
    )
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise errors.InputError(
                f"{path}: {key} must be a positive integer. Received: "
                f"{value!r}."
            )
    args = dict(
        vocabulary_size=sizes["vocab_size"],
        num_layers=sizes["num_hidden_layers"],
        num_heads=sizes["num_attention_heads"],
        num_key_value_heads=sizes["num_key_value_heads"],
        hidden_dim=sizes["hidden_size"],
        intermediate_dim=sizes["intermediate_size"],
    )
    head_dim = config.get("head_dim")
    bias = bool(config.get("attention_bias", False))
    qwen = model_type == "qwen2"
    return dict(
        args,
        max_sequence_length=context(config, path, max_context),
        norm="rmsnorm",
        activation="swiglu",
        position_embedding="rotary",
        rope_max_wavelength=theta,
        rope_scaling=scaling,
        use_bias=False,
        fused_qkv=False,
        head_dim=int(head_dim) if head_dim else None,
        qkv_bias=True if qwen else bias,
        output_bias=False if qwen else bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        layer_norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        dropout=0.0,
    )


def targets(backbone) -> dict[str, checkpoint_lib.Target]:
    """Hugging Face tensor names to the backbone's variables."""
    target = checkpoint_lib.Target
    out = {
        "model.embed_tokens.weight": target(
            backbone.token_embedding.embeddings
        ),
        "model.norm.weight": target(backbone.final_norm.scale),
    }
    if not backbone.tie_embeddings:
        out["lm_head.weight"] = target(
            backbone.token_embedding.reverse_embeddings, transpose=True
        )
    for i, block in enumerate(backbone.blocks):
        prefix = f"model.layers.{i}."
        attention = block.attention
        dense = {
            "self_attn.q_proj": attention.query,
            "self_attn.k_proj": attention.key,
            "self_attn.v_proj": attention.value,
            "self_attn.o_proj": attention.output_dense,
            "mlp.down_proj": block.mlp_out,
        }
        for name, layer in dense.items():
            out[prefix + name + ".weight"] = target(layer.kernel, True)
            if layer.use_bias:
                out[prefix + name + ".bias"] = target(layer.bias)
        width = block.intermediate_dim
        for half, name in enumerate(("gate_proj", "up_proj")):
            out[f"{prefix}mlp.{name}.weight"] = target(
                block.mlp_in.kernel, True, half * width, width
            )
            if block.mlp_in.use_bias:
                out[f"{prefix}mlp.{name}.bias"] = target(
                    block.mlp_in.bias, False, half * width, width
                )
        out[prefix + "input_layernorm.weight"] = target(
            block.attention_norm.scale
        )
        out[prefix + "post_attention_layernorm.weight"] = target(
            block.mlp_norm.scale
        )
    return out
