"""The way out: a tflm model written in the Hugging Face layout.

`to_huggingface(model, directory)` writes what transformers'
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
read offline (and vLLM and llama.cpp's converter with them):
`config.json`, `generation_config.json`, `model.safetensors` (sharded
above 2 GiB, with its index; float32 or bfloat16), the tokenizer's files
and `chat_template.jinja`. The tensors are the importers' mappings
(`tflm.importers.gpt2.targets`, `tflm.importers.llama.targets`) read the
other way, so importing the result gives the same model back.

Families: GPT-2 blocks (LayerNorm, tanh GELU, learned positions, biased
projections, tied embeddings) as `gpt2`; RMSNorm, SwiGLU, rotary blocks as
`llama` (`qwen2` for biases on q/k/v only, `mistral` on request). Anything
else is refused, naming the field that has no counterpart; nothing is
approximated.
"""

from __future__ import annotations

import logging
import os
import re

from tflm import atomic
from tflm import errors
from tflm.export import hf_chat_template
from tflm.export import hf_tokenizer
from tflm.export import safetensors
from tflm.importers import chat_templates
from tflm.importers import huggingface as importers_hf
from tflm.models import lora as lora_lib
from tflm.models import weights as weights_lib
from tflm.tokenizers import hf_files

logger = logging.getLogger(__name__)

CONFIG_FILE = importers_hf.CONFIG_FILE
GENERATION_CONFIG_FILE = importers_hf.GENERATION_CONFIG_FILE
CHAT_TEMPLATE_FILE = chat_templates.JINJA_FILE
WEIGHTS = ("float32", "bfloat16")
MODEL_TYPES = tuple(importers_hf.FAMILIES)
# What `to_huggingface` writes: an existing folder keeps its other files.
OWNED = (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    CHAT_TEMPLATE_FILE,
    safetensors.WEIGHTS_FILE,
    safetensors.INDEX_FILE,
    *hf_tokenizer.FILES,
)
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def to_huggingface(
    model,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    weights: str = "float32",
    model_type: str | None = None,
    max_shard_bytes: int = safetensors.MAX_SHARD_BYTES,
) -> str:
    """Writes `model` (a `CausalLM` with its tokenizer) in the Hugging Face
    layout.

    Args:
        model: a `tflm.CausalLM` whose `tokenizer` is set; LoRA adapters
            are merged into the written weights (`model` is kept).
        directory: the folder to write, atomically.
        overwrite: replace the files of an earlier export there.
        weights: `float32` or `bfloat16` (rounded to nearest even).
        model_type: the Hugging Face `model_type` to write; defaults to
            the one an imported model came from (`model.hf_model_type`,
            kept by its fine-tunes), else `gpt2` or `llama` by the
            architecture (`qwen2` for q/k/v biases). `mistral` may be asked
            for a Llama-style model without biases.
        max_shard_bytes: the most bytes of one safetensors file.

    Returns:
        The folder's real path.

    Raises:
        InputError: an architecture or tokenizer without a transformers
            counterpart (naming the field), an int8 model, or a folder that
            holds an earlier export and no `overwrite`.
    """
    if weights not in WEIGHTS:
        raise errors.InputError(
            f"weights must be one of {', '.join(WEIGHTS)}. Received: "
            f"{weights!r}."
        )
    check_model(model)
    model = lora_lib.merged(model)  # Adapters folded into the weights.
    tokenizer = model.tokenizer
    hf_tokenizer.check(tokenizer)
    config, tensors = hf_tensors(model, model_type)
    template = getattr(model, "template", None)
    jinja = hf_chat_template.jinja(template, tokenizer) if template else None
    config.update(torch_dtype=weights, dtype=weights)
    directory = atomic.resolve(directory)
    owned = OWNED + tuple(_shards(directory))

    def write(folder: str) -> None:
        special = hf_tokenizer.write(
            tokenizer, folder, model_max_length=_context(model)
        )
        config.update(_token_ids(special, getattr(model, "eos_ids", ())))
        hf_files.write_json(os.path.join(folder, CONFIG_FILE), config)
        generation = {k: config[k] for k in _TOKEN_IDS}
        hf_files.write_json(
            os.path.join(folder, GENERATION_CONFIG_FILE), generation
        )
        if jinja is not None:
            path = os.path.join(folder, CHAT_TEMPLATE_FILE)
            with open(path, "w", encoding="utf-8") as f:
                f.write(jinja)
        safetensors.write(folder, tensors, weights, max_shard_bytes)

    path = atomic.write_directory(
        directory, write, overwrite=overwrite, owned=owned
    )
    logger.debug("Wrote %s (%s, %s).", path, config["model_type"], weights)
    return path


def check_model(model) -> None:
    """InputError for what no export to another runtime can hold (the
    Hugging Face layout and GGUF alike)."""
    if getattr(model, "tokenizer", None) is None:
        raise errors.InputError(
            "the model has no tokenizer to write: set model.tokenizer (a "
            "model directory loads its own)."
        )
    if weights_lib.weights_of(model) == "int8":
        raise errors.InputError(
            "the model's weights are int8, which transformers and "
            "llama.cpp do not load as they are: convert them first with "
            "tflm.models.weights.convert_weights(model, 'float32') (`tflm "
            "export` does)."
        )


def _token_ids(special: dict, eos_ids) -> dict:
    """`config.json`'s token ids: every end id (the tokenizer's and the
    model's own, such as Llama 3's `<|eot_id|>`), as transformers lists
    them."""
    eos = list(dict.fromkeys([special["eos_token_id"], *eos_ids]))
    return dict(
        bos_token_id=special.get("bos_token_id"),
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=special.get("pad_token_id"),
    )


def mapping(model, model_type: str | None = None):
    """`(config fields, {tensor name: Target})` of `model` as a Hugging
    Face model of its family (token ids and dtype not included).

    Raises:
        InputError: naming the first field without a counterpart.
    """
    if model_type is not None and model_type not in MODEL_TYPES:
        raise errors.InputError(
            f"model_type must be one of {', '.join(MODEL_TYPES)}. Received: "
            f"{model_type!r}."
        )
    recorded = getattr(model, "hf_model_type", None)
    if model_type is None and recorded in MODEL_TYPES:
        model_type = recorded  # The family an imported model came from.
    backbone = model.backbone.get_config()
    biases = _biases(model.backbone)
    if model_type is None:  # Learned positions are GPT-2's alone.
        learned = backbone.get("position_embedding") == "learned"
        family = importers_hf.FAMILIES["gpt2" if learned else "llama"]
    else:
        family = importers_hf.FAMILIES[model_type]
    config = family.hf_config(backbone, biases, model_type)
    return config, family.targets(model.backbone)


def hf_tensors(model, model_type: str | None = None):
    """`(config fields, [safetensors.Tensor])`: `mapping` with each
    tensor's name, shape and reader, in the order to write them (the
    tensors are read when written, one at a time)."""
    config, targets = mapping(model, model_type)
    return config, [
        safetensors.Tensor(name, target.shape, target.read)
        for name, target in targets.items()
    ]


def _biases(backbone) -> dict[str, bool]:
    """Whether each kind of projection has a bias, as built."""
    block = backbone.blocks[0]
    attention = block.attention
    qkv = attention.query_key_value if attention.fused_qkv else attention.query
    if block.mlp_in.use_bias != block.mlp_out.use_bias:
        raise errors.InputError(
            f"the model's mlp_in bias is {block.mlp_in.use_bias} but its "
            f"mlp_out bias {block.mlp_out.use_bias}: Hugging Face models "
            "have both or neither."
        )
    return dict(
        qkv=qkv.use_bias,
        output=attention.output_dense.use_bias,
        mlp=block.mlp_in.use_bias,
    )


def _context(model) -> int:
    return int(model.backbone.max_sequence_length)


def _shards(directory: str) -> list[str]:
    """Shard files of an earlier export in `directory` (superseded too)."""
    if not os.path.isdir(directory):
        return []
    return [name for name in os.listdir(directory) if _SHARD.match(name)]
