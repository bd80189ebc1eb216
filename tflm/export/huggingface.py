"""The way out: a tflm model written in the Hugging Face layout.

`to_huggingface(model, directory)` writes what `transformers`'
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
read offline: `config.json`, `generation_config.json`,
`model.safetensors` (float32), and the tokenizer's own files. The tensors
are the importer's mapping (`tflm.importers.gpt2.hf_variables`) read the
other way, so importing the result gives the same model back.

Mapped so far: GPT-2 blocks (LayerNorm, tanh GELU, learned positions,
fused biased projections, tied embeddings) with a GPT-2 byte-level BPE
tokenizer. Anything else is refused, naming what has no counterpart; it
is never approximated.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from tflm import atomic
from tflm import errors
from tflm.importers import gpt2 as gpt2_lib
from tflm.models import lora as lora_lib
from tflm.models import presets
from tflm.tokenizers import gpt2_bpe

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# What every file `to_huggingface` writes is called: an existing folder
# keeps its other entries.
OWNED = (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    WEIGHTS_FILE,
    TOKENIZER_CONFIG_FILE,
    gpt2_bpe.VOCABULARY_FILE,
    gpt2_bpe.MERGES_FILE,
    "special_tokens_map.json",
)


def to_huggingface(
    model, directory: str | os.PathLike, *, overwrite: bool = False
) -> str:
    """Writes `model` (a `CausalLM` with its tokenizer) in the Hugging Face
    layout.

    Args:
        model: a `tflm.CausalLM` whose `tokenizer` is set; LoRA adapters
            are merged into the written weights (`model` is kept).
        directory: the folder to write, atomically.
        overwrite: replace the files of an earlier export there.

    Returns:
        The folder's real path.

    Raises:
        InputError: an architecture or tokenizer without a transformers
            counterpart (naming the field), or a folder that holds an
            earlier export and no `overwrite`.
    """
    model = lora_lib.merged(model)  # Adapters folded into the weights.
    config = hf_config(model)
    tokenizer = model.tokenizer
    tensors = {
        name: np.asarray(variable.numpy(), np.float32)
        for name, variable in gpt2_lib.hf_variables(model.backbone).items()
    }

    def write(folder: str) -> None:
        _write_json(os.path.join(folder, CONFIG_FILE), config)
        _write_json(
            os.path.join(folder, GENERATION_CONFIG_FILE),
            dict(
                bos_token_id=config["bos_token_id"],
                eos_token_id=config["eos_token_id"],
            ),
        )
        write_safetensors(os.path.join(folder, WEIGHTS_FILE), tensors)
        tokenizer._save_assets(folder)
        end = _token(tokenizer, tokenizer.eos_id)
        _write_json(
            os.path.join(folder, TOKENIZER_CONFIG_FILE),
            dict(
                tokenizer_class="GPT2Tokenizer",
                bos_token=_token(tokenizer, tokenizer.bos_id),
                eos_token=end,
                unk_token=end,
                add_prefix_space=False,
                model_max_length=config["n_positions"],
            ),
        )

    return atomic.write_directory(
        directory, write, overwrite=overwrite, owned=OWNED
    )


def hf_config(model) -> dict[str, Any]:
    """The `config.json` of `model` as a Hugging Face GPT-2.

    Raises:
        InputError: naming the first field without a counterpart.
    """
    backbone = model.backbone.get_config()
    block = dict(presets.GPT2_BLOCK)
    for field, value in block.items():
        if field in ("dropout", "layer_norm_epsilon"):
            continue
        if backbone.get(field) != value:
            raise errors.InputError(
                f"the model's {field} is {backbone.get(field)!r}: only GPT-2 "
                f"blocks ({field}={value!r}) export to the Hugging Face "
                "layout so far (Llama-family export is not written yet)."
            )
    hidden, heads = backbone["hidden_dim"], backbone["num_heads"]
    same = dict(
        num_key_value_heads=(None, heads),
        head_dim=(None, hidden // heads),
        qkv_bias=(None, True),
        output_bias=(None, True),
        mlp_bias=(None, True),
        rope_scaling=(None,),
    )
    for field, allowed in same.items():
        if backbone.get(field) not in allowed:
            raise errors.InputError(
                f"the model's {field} is {backbone.get(field)!r}: a Hugging "
                f"Face GPT-2 has {field} {allowed[-1]!r}."
            )
    tokenizer = model.tokenizer
    if not isinstance(tokenizer, gpt2_bpe.GPT2BPETokenizer):
        name = getattr(tokenizer, "type_name", type(tokenizer).__name__)
        raise errors.InputError(
            f"the model's tokenizer is {name!r}: only a GPT-2 byte-level BPE "
            "tokenizer exports to the Hugging Face layout so far."
        )
    return dict(
        model_type="gpt2",
        architectures=["GPT2LMHeadModel"],
        vocab_size=backbone["vocabulary_size"],
        n_positions=backbone["max_sequence_length"],
        n_ctx=backbone["max_sequence_length"],
        n_embd=hidden,
        n_layer=backbone["num_layers"],
        n_head=backbone["num_heads"],
        n_inner=backbone["intermediate_dim"],
        activation_function="gelu_new",
        layer_norm_epsilon=backbone["layer_norm_epsilon"],
        resid_pdrop=backbone["dropout"],
        embd_pdrop=backbone["dropout"],
        attn_pdrop=backbone["dropout"],
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        tie_word_embeddings=True,
    )


def _token(tokenizer: gpt2_bpe.GPT2BPETokenizer, token_id: int) -> str:
    for token, index in tokenizer.vocabulary.items():
        if index == token_id:
            return token
    raise errors.InputError(
        f"the tokenizer has no token for id {token_id}; it cannot be "
        "written as a Hugging Face tokenizer."
    )


def _write_json(path: str, content: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """Writes float32 `tensors` as one `.safetensors` file, a tensor at a
    time (the format: an 8-byte little-endian header length, a JSON
    header of names, dtypes, shapes and byte ranges, then the bytes)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, array in tensors.items():
        size = array.size * 4
        header[name] = dict(
            dtype="F32",
            shape=list(array.shape),
            data_offsets=[offset, offset + size],
        )
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array, "<f4").tobytes())
