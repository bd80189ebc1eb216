"""Published checkpoints to tflm model directories.

`import_checkpoint(path, out_dir)` reads a checkpoint directory in the
Hugging Face layout (GPT-2, Llama, Qwen2, Mistral; see
`tflm.importers.huggingface`) or a keras-hub GPT-2 preset, and writes a
model directory that `tflm generate`, `finetune`, `eval` and `export` take.
"""

from __future__ import annotations

import logging
import os

from tflm import errors
from tflm.importers import huggingface
from tflm.importers import keras_hub_gpt2
from tflm.models import model_dir
from tflm.tokenizers import hf_files

logger = logging.getLogger(__name__)

HUGGING_FACE = "huggingface"
KERAS_HUB = "keras_hub"


def detect_format(path: str | os.PathLike) -> str:
    """`"huggingface"` or `"keras_hub"`, from the directory's `config.json`.

    Raises:
        ValueError: `path` is not a checkpoint directory of either layout.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise errors.InputError(f"{path} is not a directory.")
    config_path = os.path.join(path, huggingface.CONFIG_FILE)
    config = hf_files.read_json(config_path)
    if keras_hub_gpt2.is_keras_hub_preset(config):
        return KERAS_HUB
    if "model_type" in config:
        return HUGGING_FACE
    raise errors.InputError(
        f"{config_path} is neither a Hugging Face config (no model_type) nor "
        "a keras-hub preset config (no class_name)."
    )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    max_context: int | None = None,
    chat_template: str | None = None,
    **overrides,
):
    """`(CausalLM, tokenizer)` from a checkpoint directory of either layout.

    Args:
        path: a Hugging Face directory (GPT-2, Llama, Qwen2, Mistral) or a
            keras-hub GPT-2 preset.
        max_context: the context to run a rotary model at (see
            `tflm.importers.huggingface.load`).
        chat_template: a format name instead of the checkpoint's own.
        **overrides: `Backbone` arguments to change, such as `dropout`.
    """
    if detect_format(path) == KERAS_HUB:
        if max_context is not None or chat_template is not None:
            raise errors.InputError(
                "--max-context and --chat-template apply to Hugging Face "
                "checkpoints; a keras-hub GPT-2 preset has neither."
            )
        return keras_hub_gpt2.load_keras_hub_gpt2(path, **overrides)
    return huggingface.load(
        path, max_context=max_context, chat_template=chat_template, **overrides
    )


def import_checkpoint(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    max_context: int | None = None,
    chat_template: str | None = None,
    **overrides,
) -> str:
    """Turns a checkpoint directory into a tflm model directory.

    Args:
        path: a Hugging Face directory (`config.json`, safetensors weights,
            tokenizer files) or a keras-hub GPT-2 preset directory.
        out_dir: the model directory to write (see
            `tflm.models.model_dir.save`).
        overwrite: replace a model directory already at `out_dir` (its
            weights, tokenizer and training state); without it, an existing
            model is refused before anything is read.
        max_context: see `load_checkpoint`.
        chat_template: see `load_checkpoint`.
        **overrides: `Backbone` arguments to change, such as `dropout`.

    Returns:
        The absolute path of the model directory.

    Raises:
        InputError: naming the file (and tensor) that is wrong, or an
            `out_dir` that holds a model already (without `overwrite`) or
            other files.
    """
    out_dir = model_dir.check_target(out_dir)
    if model_dir.is_model_dir(out_dir) and not overwrite:
        raise errors.InputError(
            f"--out {out_dir} already holds a model. Pass --overwrite "
            "(overwrite=True) to replace it (its weights, tokenizer and "
            "training state), or name a new folder."
        )
    model, tokenizer = load_checkpoint(
        path, max_context=max_context, chat_template=chat_template, **overrides
    )
    metadata = {"template": model.template} if model.template else {}
    if getattr(model, "hf_model_type", None):
        # What `tflm export --format huggingface` writes back by default.
        metadata[model_dir.HF_MODEL_TYPE] = model.hf_model_type
    model_dir.save(
        model, tokenizer, out_dir, overwrite=overwrite, metadata=metadata
    )
    logger.info("Imported %s to %s.", os.fspath(path), out_dir)
    return out_dir


__all__ = [
    "detect_format",
    "import_checkpoint",
    "load_checkpoint",
]
