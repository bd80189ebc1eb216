"""Pretrained GPT-2 from local files in the Hugging Face layout.

A Hugging Face checkpoint directory holds `config.json` (`model_type:
gpt2`), `model.safetensors` (or shards listed in
`model.safetensors.index.json`), `vocab.json` and `merges.txt`. Tensors are
read one at a time, a few MiB per copy, straight into the variables of a
`CausalLM` built from the config, so memory stays near one copy of the
weights. keras-hub presets are read by `tflm.importers.keras_hub_gpt2`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tflm import errors
from tflm import tokenizers
from tflm.importers import checkpoint as checkpoint_lib
from tflm.importers import hf_tokenizer
from tflm.importers import weights
from tflm.models import backbone as backbone_lib
from tflm.models import causal_lm
from tflm.models import presets
from tflm.tokenizers import gpt2_bpe
from tflm.tokenizers import hf_files

logger = logging.getLogger(__name__)

CONFIG_FILE = hf_files.MODEL_CONFIG_FILE
# Hugging Face names of GELU with the tanh approximation.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Buffers and duplicates that are not weights of the model.
IGNORED = ("attn.bias", "attn.masked_bias", "lm_head.weight")
# Config values other than GPT-2's that tflm's GPT-2 cannot express.
_REQUIRED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


def backbone_args(config: dict[str, Any], path: str) -> dict[str, Any]:
    """`Backbone` arguments from a Hugging Face GPT-2 `config.json`.

    Args:
        config: the parsed `config.json`.
        path: its path, for errors.

    Raises:
        ValueError: naming `path` and the value, for another model type or
            a GPT-2 variant that tflm cannot run exactly.
    """
    model_type = config.get("model_type")
    if model_type != "gpt2":
        raise errors.InputError(
            f"{path}: model_type is {model_type!r}; tflm imports GPT-2 "
            "checkpoints (model_type 'gpt2') only."
        )
    activation = config.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        raise errors.InputError(
            f"{path}: activation_function is {activation!r}; tflm's GPT-2 "
            f"uses GELU with the tanh approximation ({', '.join(TANH_GELU)})."
        )
    for key, value in _REQUIRED.items():
        if config.get(key, value) != value:
            raise errors.InputError(
                f"{path}: {key} is {config[key]!r}; tflm imports GPT-2 with "
                f"{key}={value} only."
            )
    try:
        hidden = int(config["n_embd"])
        context = config.get("n_positions") or config["n_ctx"]
        args = dict(
            vocabulary_size=int(config["vocab_size"]),
            num_layers=int(config["n_layer"]),
            num_heads=int(config["n_head"]),
            hidden_dim=hidden,
            intermediate_dim=int(config.get("n_inner") or 4 * hidden),
            max_sequence_length=int(context),
        )
    except KeyError as err:
        raise errors.InputError(f"{path} lacks {err.args[0]!r}.") from None
    return dict(
        presets.GPT2_BLOCK,
        **args,
        layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
        dropout=float(config.get("resid_pdrop", 0.1)),
    )


def hf_variables(backbone: backbone_lib.Backbone) -> dict[str, Any]:
    """Hugging Face GPT-2 tensor names (no prefix) to backbone variables.

    Conv1D weights are stored input-major, as Keras `Dense` kernels, and
    `c_attn` is `[q | k | v]` as `query_key_value`: nothing is transposed.
    """
    norm = backbone.final_norm
    names = {
        "wte.weight": backbone.token_embedding.embeddings,
        "wpe.weight": backbone.position_embedding.embeddings,
        "ln_f.weight": norm.gamma,
        "ln_f.bias": norm.beta,
    }
    for i, block in enumerate(backbone.blocks):
        layers = {
            "ln_1": block.attention_norm,
            "ln_2": block.mlp_norm,
            "attn.c_attn": block.attention.query_key_value,
            "attn.c_proj": block.attention.output_dense,
            "mlp.c_fc": block.mlp_in,
            "mlp.c_proj": block.mlp_out,
        }
        for hf_name, layer in layers.items():
            is_norm = hf_name.startswith("ln")
            names[f"h.{i}.{hf_name}.weight"] = (
                layer.gamma if is_norm else layer.kernel
            )
            names[f"h.{i}.{hf_name}.bias"] = (
                layer.beta if is_norm else layer.bias
            )
    return names


def _prefix(checkpoint) -> str:
    """The name prefix of the checkpoint's tensors (`transformer.` or
    none)."""
    found = [n for n in checkpoint.where if n.endswith("wte.weight")]
    return found[0][: -len("wte.weight")] if found else ""


def load_hf_gpt2(
    path: str | os.PathLike, **overrides
) -> tuple[causal_lm.CausalLM, tokenizers.Tokenizer]:
    """Builds a `CausalLM` and its tokenizer from a Hugging Face GPT-2 dir.

    Args:
        path: a directory with `config.json`, `model.safetensors`,
            `vocab.json` and `merges.txt`.
        **overrides: `Backbone` arguments to change, such as `dropout`
            (defaults to the checkpoint's `resid_pdrop`).

    Returns:
        `(model, tokenizer)`; `model.tokenizer` is set too.

    Raises:
        ValueError: naming the file (and tensor) that is wrong: another
            model type, a truncated or foreign weights file, a tensor whose
            shape does not fit the config.
    """
    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    args = backbone_args(hf_files.read_json(config_path), config_path)
    weights.log_architecture(args, config_path)
    tokenizer = hf_tokenizer.recorded(
        path
    ) or gpt2_bpe.GPT2BPETokenizer.from_directory(path)
    weights.check_vocabulary(tokenizer, args["vocabulary_size"], config_path)
    checkpoint = checkpoint_lib.Checkpoint(path)
    try:
        model = causal_lm.CausalLM(
            backbone_lib.Backbone(**{**args, **overrides})
        )
        checkpoint.copy_into(
            targets(model.backbone, _prefix(checkpoint)), ignored=IGNORED
        )
    finally:
        checkpoint.close()
    model.tokenizer = tokenizer
    return model, tokenizer


def hf_config(
    backbone: dict[str, Any],
    biases: dict[str, bool],
    model_type: str | None = None,
) -> dict:
    """The Hugging Face `config.json` fields of a GPT-2-block backbone (the
    inverse of `backbone_args`), without the token ids. `model_type` is
    `gpt2` or `None` (the signature every family's `hf_config` has).

    Raises:
        InputError: naming the first field without a GPT-2 counterpart.
    """
    for field, value in presets.GPT2_BLOCK.items():
        if (
            field not in ("layer_norm_epsilon",)
            and backbone.get(field) != value
        ):
            raise errors.InputError(
                f"the model's {field} is {backbone.get(field)!r}: a Hugging "
                f"Face GPT-2 has {field} {value!r}."
            )
    hidden, heads = backbone["hidden_dim"], backbone["num_heads"]
    same = dict(
        num_key_value_heads=(None, heads),
        head_dim=(None, hidden // heads),
        rope_scaling=(None,),
    )
    for field, allowed in same.items():
        if backbone.get(field) not in allowed:
            raise errors.InputError(
                f"the model's {field} is {backbone.get(field)!r}: a Hugging "
                f"Face GPT-2 has {field} {allowed[-1]!r}."
            )
    unbiased = [name for name, on in biases.items() if not on]
    if unbiased:
        raise errors.InputError(
            f"the model's {unbiased[0]} projection has no bias: every "
            "projection of a Hugging Face GPT-2 has one."
        )
    context, dropout = backbone["max_sequence_length"], backbone["dropout"]
    return dict(
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        vocab_size=backbone["vocabulary_size"],
        n_positions=context,
        n_ctx=context,
        n_embd=hidden,
        n_layer=backbone["num_layers"],
        n_head=heads,
        n_inner=backbone["intermediate_dim"],
        activation_function="gelu_new",
        layer_norm_epsilon=backbone["layer_norm_epsilon"],
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        tie_word_embeddings=True,
    )


def targets(backbone, prefix: str = "") -> dict[str, checkpoint_lib.Target]:
    """`hf_variables` as `Target`s under `prefix` (`transformer.` in files
    saved from `GPT2LMHeadModel`; none in what tflm exports). Nothing is
    transposed: Conv1D weights are input-major, as Keras kernels."""
    return {
        prefix + name: checkpoint_lib.Target(variable)
        for name, variable in hf_variables(backbone).items()
    }
