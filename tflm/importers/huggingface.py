"""Hugging Face checkpoint directories of every family tflm imports.

One protocol per family: its module matches a `config.json` (by
`model_type`), maps it onto `Backbone` arguments, and names the variable
each checkpoint tensor goes to; this module reads the files, streams the
tensors in, and attaches the tokenizer, the chat template and the end ids
of `generation_config.json`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tflm import errors
from tflm.importers import chat_templates
from tflm.importers import checkpoint as checkpoint_lib
from tflm.importers import gpt2
from tflm.importers import hf_tokenizer
from tflm.importers import llama
from tflm.importers import weights
from tflm.models import backbone as backbone_lib
from tflm.models import causal_lm
from tflm.tokenizers import hf_files

logger = logging.getLogger(__name__)

CONFIG_FILE = hf_files.MODEL_CONFIG_FILE
GENERATION_CONFIG_FILE = "generation_config.json"
# Each family's module, by `model_type`. The way out picks from it: every
# family's `hf_config(backbone, biases, model_type)` and `targets(backbone)`
# (tensor names to variables, which `load` also copies into).
FAMILIES = {"gpt2": gpt2, **dict.fromkeys(llama.MODEL_TYPES, llama)}


def read_config(path: str) -> tuple[dict[str, Any], str]:
    """`(config, its path)`; InputError for a model type tflm cannot run."""
    config_path = os.path.join(path, CONFIG_FILE)
    config = hf_files.read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        architectures = config.get("architectures") or [model_type]
        raise errors.InputError(
            f"{config_path}: {', '.join(map(str, architectures))} "
            f"(model_type {model_type!r}) is not a family tflm imports; it "
            f"imports {', '.join(FAMILIES)}."
        )
    return config, config_path


def eos_ids(path: str, config: dict[str, Any]) -> tuple[int, ...]:
    """The end ids of `generation_config.json` (or `config.json`): an int
    or a list (Llama 3 instruct ends turns with `<|eot_id|>`)."""
    generation_path = os.path.join(path, GENERATION_CONFIG_FILE)
    source = config
    if os.path.isfile(generation_path):
        source = hf_files.read_json(generation_path)
    value = source.get("eos_token_id")
    if value is None:
        value = config.get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return tuple(
        int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)
    )


def load(
    path: str | os.PathLike,
    *,
    max_context: int | None = None,
    chat_template: str | None = None,
    **overrides,
):
    """`(CausalLM, tokenizer)` from a Hugging Face checkpoint directory.

    Args:
        path: the directory (`config.json`, safetensors weights, tokenizer
            files, optionally `generation_config.json` and a chat template).
        max_context: run the model at this context (at most its positions,
            or its sliding window); defaults to that limit.
        chat_template: a template name to use instead of recognising the
            checkpoint's (`tflm.importers.chat_templates.NAMES`).
        **overrides: `Backbone` arguments to change, such as `dropout`.

    Raises:
        InputError: naming the file (and tensor or field) that is wrong.
    """
    path = os.fspath(path)
    config, config_path = read_config(path)
    if config["model_type"] == "gpt2":
        if max_context is not None:
            raise errors.InputError(
                "--max-context applies to rotary models (Llama, Qwen2, "
                "Mistral); GPT-2's learned positions fix its context."
            )
        model, tokenizer = gpt2.load_hf_gpt2(path, **overrides)
        template = chat_templates.from_checkpoint(
            path, tokenizer, chat_template
        )
    else:
        args = llama.backbone_args(config, config_path, max_context)
        logger.debug("%s: %s", config_path, args)
        tokenizer = hf_tokenizer.load(path)
        weights.check_vocabulary(
            tokenizer, args["vocabulary_size"], config_path
        )
        # Everything but the weights is checked before they are read.
        template = chat_templates.from_checkpoint(
            path, tokenizer, chat_template
        )
        checkpoint = checkpoint_lib.Checkpoint(path)
        try:
            model = causal_lm.CausalLM(
                backbone_lib.Backbone(**{**args, **overrides})
            )
            checkpoint.copy_into(
                llama.targets(model.backbone), ignored=llama.IGNORED
            )
        finally:
            checkpoint.close()
        model.tokenizer = tokenizer
    extra = [i for i in eos_ids(path, config) if i != tokenizer.eos_id]
    model.eos_ids = tuple(extra)
    model.template = template
    model.hf_model_type = config["model_type"]
    return model, tokenizer
