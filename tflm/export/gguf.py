"""A tflm model written as one GGUF file, the format llama.cpp runs.

`to_gguf(model, path)` writes what llama.cpp's `convert_hf_to_gguf.py`
writes for the Hugging Face export of the same model (`huggingface.
hf_tensors`): `gpt2` for GPT-2 blocks, `llama` for Llama and Mistral,
`qwen2` for Llama-style blocks with biases on q, k and v only. As there:

- `llama`'s q and k projections (weights and biases) are permuted from
  Hugging Face's rotate-half layout to llama.cpp's interleaved rotary
  layout (`permute`); `qwen2` runs rotate-half rotary and is not permuted.
- GPT-2's Conv1D weights are transposed to `[out, in]`; its fused q/k/v
  stays one `attn_qkv` tensor, and its tied head is written again as
  `output.weight`. A tied Llama or Qwen2 has no `output.weight`: llama.cpp
  reads `token_embd.weight` instead.
- `float16` stores the 2-D weights in float16 and keeps the rest (norms,
  biases, GPT-2's position embeddings, `rope_freqs`) in float32.
- Linear rope scaling is `rope.scaling.type` and `rope.scaling.factor`;
  Llama 3 scaling is the per-frequency divisors `rope_freqs.weight`.

The tokenizer and chat template go into the metadata (`gguf_vocab`).
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any
from typing import NamedTuple

import numpy as np

from tflm import atomic
from tflm import errors
from tflm.export import gguf_vocab
from tflm.export import huggingface
from tflm.layers import rotary
from tflm.models import lora as lora_lib

logger = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
# Hugging Face model_type -> llama.cpp architecture, as the converter
# registers them (MistralForCausalLM is its LlamaModel).
ARCHITECTURES = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
}


class Tensor(NamedTuple):
    """One GGUF tensor: its name, numpy shape, storage dtype and reader."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    value: Any


def to_gguf(
    model,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    dtype: str = "float32",
) -> str:
    """Writes `model` (a `CausalLM` with its tokenizer) as a GGUF file.

    Args:
        model: a `tflm.CausalLM` whose `tokenizer` is set; LoRA adapters
            are merged into the written weights (`model` is kept).
        path: the file to write, atomically (`atomic.write_file`: staged
            beside it, renamed into place).
        overwrite: replace an existing file at `path`.
        dtype: `float32` (`ALL_F32`) or `float16` (`MOSTLY_F16`).

    Returns:
        The file's real path.

    Raises:
        InputError: `gguf` not installed, an unknown `dtype`, an int8
            model, an architecture or tokenizer llama.cpp has no
            counterpart for (naming it), an existing `path` without
            `overwrite`, or a full disk (nothing is left behind).
    """
    if dtype not in DTYPES:
        raise errors.InputError(
            f"dtype must be one of {', '.join(DTYPES)}. Received: {dtype!r}."
        )
    try:
        import gguf
    except ImportError:
        raise errors.InputError(
            "Writing GGUF needs the gguf package: pip install 'tflm[gguf]'."
        ) from None
    huggingface.check_model(model)
    model = lora_lib.merged(model)
    config, hf = huggingface.hf_tensors(model)
    arch = ARCHITECTURES[config["model_type"]]
    target = os.path.realpath(os.fspath(path))
    name = os.path.splitext(os.path.basename(target))[0]
    writer = gguf.GGUFWriter(None, arch)
    _model_keys(writer, gguf, config, name, dtype)
    gguf_vocab.write_keys(writer, model, config["vocab_size"])
    plan = gguf_tensors(config, hf, dtype)
    for tensor in plan:
        size = int(np.prod(tensor.shape)) * np.dtype(tensor.dtype).itemsize
        writer.add_tensor_info(
            tensor.name, tensor.shape, np.dtype(tensor.dtype), size
        )
    _write(writer, plan, target, overwrite)
    logger.debug("Wrote %s (%s, %s).", target, arch, dtype)
    return target


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Rows of q or k (weights or bias) from rotate-half to interleaved
    rotary order, head by head, as the converter's `LlamaModel.permute`.

    Example:
    >>> permute(np.arange(4), 1).tolist()
    [0, 2, 1, 3]
    """
    shape = weights.shape
    rows = weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:])
    return rows.swapaxes(1, 2).reshape(shape)


def gguf_tensors(config: dict, hf: list, dtype: str) -> list[Tensor]:
    """The GGUF tensors of a Hugging Face export (`hf_tensors`): names,
    layouts and storage dtypes as `convert_hf_to_gguf.py` writes them."""
    import gguf

    arch = ARCHITECTURES[config["model_type"]]
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH[arch.upper()], _blocks(config)
    )
    out = []
    if arch == "llama":
        out += _rope_freqs(config)
    elif config.get("rope_scaling", {}) and _rope_type(config) != "linear":
        raise errors.InputError(
            f"the model's {_rope_type(config)} rope scaling has no qwen2 "
            "counterpart in llama.cpp; export a model without it."
        )
    for tensor in hf:
        shape, value = _layout(
            config, tensor.name, tuple(tensor.shape), tensor.value
        )
        name = names.get_name(tensor.name, try_suffixes=(".weight", ".bias"))
        out.append(Tensor(name, shape, _storage(name, shape, dtype), value))
        if arch == "gpt2" and name == "token_embd.weight":  # The tied head.
            out.append(Tensor("output.weight", shape, out[-1].dtype, value))
    return out


def _layout(config: dict, name: str, shape: tuple, read):
    """`(shape, reader)` of `name` in llama.cpp's layout."""
    if config["model_type"] == "gpt2":
        conv = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")
        if name.endswith(conv):
            return shape[::-1], lambda: read().T
    if config["model_type"] in ("llama", "mistral"):
        q_heads = config["num_attention_heads"]
        heads = {"q_proj": q_heads, "k_proj": config["num_key_value_heads"]}
        for projection, count in heads.items():
            if name.endswith((f"{projection}.weight", f"{projection}.bias")):
                return shape, lambda n=count: permute(read(), n)
    return shape, read


def _storage(name: str, shape: tuple[int, ...], dtype: str) -> str:
    """The converter's rule: only 2-D `.weight`s other than norms and
    position embeddings are stored in float16."""
    keep = (
        len(shape) <= 1
        or name.endswith("_norm.weight")
        or name.startswith("position_embd.")
        or not name.endswith(".weight")
    )
    return "float32" if keep or dtype == "float32" else "float16"


def _rope_type(config: dict) -> str | None:
    return (config.get("rope_scaling") or {}).get("rope_type")


def _rope_freqs(config: dict) -> list[Tensor]:
    """Llama 3 rope scaling as llama.cpp's per-frequency divisors, from the
    model's own original context (the converter reads a top-level field
    Hugging Face configs lack, and falls back to 8192, Llama 3.x's)."""
    scaling = config.get("rope_scaling") or {}
    if _rope_type(config) != "llama3":
        return []
    # The frequencies tflm itself runs, unscaled over scaled.
    dim, base = _head_dim(config), config["rope_theta"]
    plain = rotary.rope_inverse_frequencies(dim, base)
    scaled = rotary.rope_inverse_frequencies(dim, base, scaling)
    divisors = np.asarray(plain / scaled, np.float32)
    return [Tensor("rope_freqs.weight", divisors.shape, "float32", divisors)]


def _head_dim(config: dict) -> int:
    heads = config["num_attention_heads"]
    return config.get("head_dim") or config["hidden_size"] // heads


def _blocks(config: dict) -> int:
    return config.get("num_hidden_layers") or config["n_layer"]


def _model_keys(writer, gguf, config: dict, name: str, dtype: str) -> None:
    """The `general.*` and architecture keys, as the converter sets them."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(_blocks(config))
    if config["model_type"] == "gpt2":
        writer.add_context_length(config["n_ctx"])
        writer.add_embedding_length(config["n_embd"])
        writer.add_feed_forward_length(config["n_inner"])
        writer.add_head_count(config["n_head"])
        writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    else:
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(config["num_attention_heads"])
        writer.add_head_count_kv(config["num_key_value_heads"])
        writer.add_rope_freq_base(config["rope_theta"])
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        if "head_dim" in config:
            writer.add_key_length(config["head_dim"])
            writer.add_value_length(config["head_dim"])
        if ARCHITECTURES[config["model_type"]] == "llama":
            writer.add_vocab_size(config["vocab_size"])
            writer.add_rope_dimension_count(_head_dim(config))
        if _rope_type(config) == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(config["rope_scaling"]["factor"])
    half = dtype == "float16"
    file_type = gguf.LlamaFileType
    writer.add_file_type(file_type.MOSTLY_F16 if half else file_type.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _array(tensor: Tensor) -> np.ndarray:
    """The tensor's values in its storage dtype, checked."""
    value = tensor.value() if callable(tensor.value) else tensor.value
    value = np.asarray(value, dtype=np.float32)
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(value.astype(tensor.dtype))
    if not np.isfinite(out).all() and np.isfinite(value).all():
        raise errors.InputError(
            f"{tensor.name} has values beyond float16's range (65504): "
            "export with dtype float32."
        )
    return out


def _write(writer, plan: list[Tensor], target: str, overwrite: bool) -> None:
    """Writes the file through `atomic.write_file` (staged, renamed)."""

    def fill(path: str) -> None:
        try:
            writer.write_header_to_file(path=pathlib.Path(path))
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for tensor in plan:
                writer.write_tensor_data(_array(tensor))
        finally:
            writer.close()

    atomic.write_file(target, fill, overwrite=overwrite)
