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


def _attention_targets(attention, prefix: str) -> dict:
    """q/k/v/o projections, from separate layers or slices of the fused
    `query_key_value` (`[q | k | v]`, as tflm's own Llama-style presets
    build it)."""
    target = checkpoint_lib.Target
    out = {}
    if attention.fused_qkv:
        fused = attention.query_key_value
        q = attention.num_heads * attention.head_dim
        kv = attention.num_key_value_heads * attention.head_dim
        slices = {"q_proj": (0, q), "k_proj": (q, kv), "v_proj": (q + kv, kv)}
        for name, (column, width) in slices.items():
            out[f"{prefix}{name}.weight"] = target(
                fused.kernel, True, column, width
            )
            if fused.use_bias:
                out[f"{prefix}{name}.bias"] = target(
                    fused.bias, False, column, width
                )
        layers = {"o_proj": attention.output_dense}
    else:
        layers = {
            "q_proj": attention.query,
            "k_proj": attention.key,
            "v_proj": attention.value,
            "o_proj": attention.output_dense,
        }
    for name, layer in layers.items():
        out[f"{prefix}{name}.weight"] = target(layer.kernel, True)
        if layer.use_bias:
            out[f"{prefix}{name}.bias"] = target(layer.bias)
    return out


def targets(backbone) -> dict[str, checkpoint_lib.Target]:
    """Hugging Face tensor names to the backbone's variables (both ways:
    the importer copies into them, the export reads them out)."""
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
        out.update(_attention_targets(block.attention, prefix + "self_attn."))
        out[prefix + "mlp.down_proj.weight"] = target(
            block.mlp_out.kernel, True
        )
        if block.mlp_out.use_bias:
            out[prefix + "mlp.down_proj.bias"] = target(block.mlp_out.bias)
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


def hf_config(
    backbone: dict[str, Any],
    biases: dict[str, bool],
    model_type: str | None = None,
) -> dict[str, Any]:
    """The Hugging Face `config.json` fields of a Llama-style backbone
    (the inverse of `backbone_args`), without the token ids.

    Args:
        backbone: the backbone's `get_config()`.
        biases: whether the `qkv`, `output` and `mlp` projections have
            biases (as built).
        model_type: `llama`, `qwen2` or `mistral`; defaults to `qwen2` for
            biases on q/k/v only (which only Qwen2 has), else `llama`.

    Raises:
        InputError: naming the first field without a counterpart.
    """
    model_type = _model_type(backbone, biases, model_type)
    layers = backbone["num_layers"]
    config = dict(
        model_type=model_type,
        architectures=[MODEL_TYPES[model_type]],
        vocab_size=backbone["vocabulary_size"],
        hidden_size=backbone["hidden_dim"],
        intermediate_size=backbone["intermediate_dim"],
        num_hidden_layers=layers,
        num_attention_heads=backbone["num_heads"],
        num_key_value_heads=backbone.get("num_key_value_heads")
        or backbone["num_heads"],
        hidden_act="silu",
        max_position_embeddings=backbone["max_sequence_length"],
        rms_norm_eps=backbone["layer_norm_epsilon"],
        tie_word_embeddings=bool(backbone.get("tie_embeddings")),
        attention_dropout=0.0,
        **_rope_fields(backbone),
    )
    if backbone.get("head_dim"):  # Else hidden_size / heads, both ways.
        config["head_dim"] = backbone["head_dim"]
    if model_type == "llama":
        config.update(attention_bias=biases["qkv"], mlp_bias=biases["mlp"])
    elif model_type == "qwen2":
        config.update(
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=layers,
        )
    else:
        # The window an import was capped at (exact within the context).
        config.update(sliding_window=backbone["max_sequence_length"])
    return config


def _model_type(backbone, biases, model_type: str | None) -> str:
    """The family `backbone` is written as; InputError where none fits."""
    for field, value in dict(
        norm="rmsnorm", activation="swiglu", position_embedding="rotary"
    ).items():
        if backbone.get(field) != value:
            raise errors.InputError(
                f"the model's {field} is {backbone.get(field)!r}: a "
                f"Hugging Face Llama-family model has {field} {value!r}."
            )
    qwen = biases["qkv"] and not biases["output"] and not biases["mlp"]
    model_type = model_type or ("qwen2" if qwen else "llama")
    if model_type not in MODEL_TYPES:
        raise errors.InputError(
            f"model_type {model_type!r} is not a Llama-family type "
            f"({', '.join(MODEL_TYPES)})."
        )
    allowed = {
        "llama": biases["qkv"] == biases["output"],
        "qwen2": qwen,
        "mistral": not any(biases.values()),
    }
    if not allowed[model_type]:
        where = [name for name, on in biases.items() if on] or ["none"]
        raise errors.InputError(
            f"the model's biases (on {', '.join(where)}) have no "
            f"{model_type} counterpart: Llama has the same bias on q, k, v "
            "and o, Qwen2 biases on q, k and v only, Mistral none. Leave "
            "model_type (--model-type) out to pick the family that fits."
        )
    return model_type


def _rope_fields(backbone) -> dict[str, Any]:
    """`rope_parameters` (transformers 5.x) and `rope_theta` with
    `rope_scaling` (4.x, vLLM, llama.cpp's converter)."""
    theta = float(backbone.get("rope_max_wavelength", 10000.0))
    scaling = backbone.get("rope_scaling")
    rope = {"rope_type": "default", "rope_theta": theta}
    if scaling:
        rope = dict(
            rope_type=scaling["type"],
            rope_theta=theta,
            **{k: v for k, v in scaling.items() if k != "type"},
        )
    if isinstance(rope.get("original_max_position_embeddings"), float):
        rope["original_max_position_embeddings"] = int(
            rope["original_max_position_embeddings"]
        )
    old = {k: v for k, v in rope.items() if k != "rope_theta"}
    return dict(
        rope_theta=theta,
        rope_scaling=old if scaling else None,
        rope_parameters=rope,
    )
