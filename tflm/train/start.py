"""What a run starts from: a preset (new weights) or a parent model, with
LoRA adapters when asked.

With `init_from`, the architecture, weights and tokenizer come from the
parent (`tflm.train.parent`); `--preset` is not used. With `lora_rank`,
`tflm.models.lora.enable_lora` freezes the base and adds adapters, so the
optimizer holds state for the adapters only. A resumed LoRA run rebuilds the
base from the parent (checked unchanged by its fingerprint) and takes its
adapters from `train/adapters.npz`.
"""

from __future__ import annotations

import os

import numpy as np

from tflm import errors
from tflm import tokenizers
from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.train import config as config_lib
from tflm.train import parent as parent_lib

# A LoRA run's adapters as training state (the model's own are
# `tflm.models.lora_storage.ADAPTERS_FILE`, beside the weights).
TRAIN_ADAPTERS_FILE = f"{model_dir.TRAIN_DIR}/adapters.npz"


def parent_backbone(
    parent: parent_lib.Parent, config: config_lib.TrainConfig
) -> dict:
    """The parent's `Backbone` arguments, with this run's dropout."""
    backbone = dict(parent.config["backbone"])
    backbone.pop("dtype", None)
    backbone.pop("name", None)
    if config.dropout is not None:
        backbone["dropout"] = config.dropout
    context = backbone["max_sequence_length"]
    length = config.sequence_length
    if length is not None and length > context:
        raise errors.InputError(
            f"--sequence-length must be <= the context of {parent.path} "
            f"({context} tokens). Received: sequence_length={length}."
        )
    _check_lora(config, backbone)
    return backbone


def _check_lora(config: config_lib.TrainConfig, backbone: dict) -> None:
    rank = config.lora_rank
    if rank is None:
        return
    smallest = min(backbone["hidden_dim"], backbone["intermediate_dim"])
    if rank > backbone["hidden_dim"] or rank > smallest:
        raise errors.InputError(
            f"--lora-rank must be <= the smallest adapted layer's width "
            f"({smallest}). Received: lora_rank={rank}."
        )


def parent_tokenizer(parent: parent_lib.Parent) -> tokenizers.Tokenizer:
    return tokenizers.load_tokenizer(
        os.path.join(parent.directory, model_dir.TOKENIZER_DIR)
    )


def build_from_parent(
    parent: parent_lib.Parent, config: config_lib.TrainConfig
) -> causal_lm.CausalLM:
    """The parent model, in this run's precision and dropout, with float32
    weights (a parent stored in bfloat16 or int8 is cast up or dequantized);
    call it in the strategy's scope."""
    overrides = {}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    return model_dir.load_model(
        causal_lm.CausalLM,
        parent.directory,
        dtype=config.precision,
        weights="float32",
        **overrides,
    )


def enable_lora(lm, config: config_lib.TrainConfig) -> None:
    """Adds the adapters `config` asks for (nothing without `lora_rank`)."""
    if config.lora_rank is None:
        return
    try:
        from tflm.models import lora
    except ImportError:
        raise errors.InputError(
            "--lora-rank needs tflm.models.lora, which this tflm lacks."
        ) from None
    try:
        lora.enable_lora(
            lm,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            targets=tuple(config.lora_targets),
        )
    except ValueError as err:
        raise errors.InputError(f"LoRA: {err}") from None


def save_adapters(lm, path: str) -> None:
    """Writes the trainable variables (the adapters) by path."""
    with open(path, "wb") as f:
        np.savez(f, **{_key(v): np.array(v) for v in lm.trainable_variables})


def restore_adapters(lm, directory: str) -> None:
    """Loads what `save_adapters` wrote into the same variables."""
    path = os.path.join(directory, TRAIN_ADAPTERS_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise errors.InputError(
            f"{path} is missing or corrupt ({err}); train into a new --out."
        ) from None
    variables = {_key(v): v for v in lm.trainable_variables}
    if sorted(arrays) != sorted(variables):
        raise errors.InputError(
            f"{path} holds other adapters than this run's (--lora-rank or "
            "--lora-targets changed?). Train into a new --out."
        )
    for key, variable in variables.items():
        variable.assign(arrays[key])


def _key(variable) -> str:
    return variable.path.replace("/", "|")
