"""A preset's shape in other families' files and frameworks, random weights.

GPT-2-shaped presets (`norm == "layernorm"`) become keras-hub's
`GPT2CausalLM` and transformers' `GPT2LMHeadModel`; Llama-shaped ones
(`norm == "rmsnorm"`) keras-hub's `LlamaCausalLM` and transformers'
`LlamaForCausalLM` (`keras_hub_model`, `hf_model`).
`write_llama_checkpoint` writes a Llama-shaped preset as a Hugging Face
checkpoint directory of the Llama, Qwen2 or Mistral family (the
`tflm.importers` input): `config.json` as transformers 5.x writes it,
safetensors weights (N(0, 0.02), norms 1; one file, or shards with an
index), `generation_config.json`, and the byte-level BPE tokenizer files
of `bpe_files` (trained on the shared corpora, ChatML template).
"""

from __future__ import annotations

import inspect
import os
from typing import NamedTuple

import bpe_files
import numpy as np

LLAMA_FAMILIES = ("llama", "qwen2", "mistral")
DTYPES = {"float32": 4, "bfloat16": 2}
TRANSFORMERS_VERSION = "5.25.0"


def shape(preset: str) -> dict:
    """`preset`'s `Backbone` arguments, defaults filled in."""
    from tflm.models import backbone
    from tflm.models import get_preset

    parameters = inspect.signature(backbone.Backbone).parameters.values()
    defaults = {
        p.name: p.default for p in parameters if p.default is not p.empty
    }
    c = {**defaults, **get_preset(preset)}
    c["num_key_value_heads"] = c["num_key_value_heads"] or c["num_heads"]
    c["head_dim"] = c["head_dim"] or c["hidden_dim"] // c["num_heads"]
    return c


def keras_hub_model(preset: str):
    """keras-hub's causal LM of `preset`'s shape (random weights, no
    dropout, no preprocessor), uncompiled."""
    import keras_hub

    c = shape(preset)
    if c["norm"] != "rmsnorm":
        return keras_hub_gpt2(preset)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=c["vocabulary_size"],
        num_layers=c["num_layers"],
        num_query_heads=c["num_heads"],
        hidden_dim=c["hidden_dim"],
        intermediate_dim=c["intermediate_dim"],
        num_key_value_heads=c["num_key_value_heads"],
        rope_max_wavelength=c["rope_max_wavelength"],
        layer_norm_epsilon=c["layer_norm_epsilon"],
        dropout=0.0,
        tie_word_embeddings=c["tie_embeddings"],
    )
    return keras_hub.models.LlamaCausalLM(backbone, preprocessor=None)


def keras_hub_gpt2(preset: str):
    """keras-hub's `GPT2CausalLM` of `preset`'s shape (random weights, no
    dropout, no preprocessor), uncompiled."""
    import keras_hub

    c = shape(preset)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=c["vocabulary_size"],
        num_layers=c["num_layers"],
        num_heads=c["num_heads"],
        hidden_dim=c["hidden_dim"],
        intermediate_dim=c["intermediate_dim"],
        max_sequence_length=c["max_sequence_length"],
        dropout=0.0,
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)


def hf_model(preset: str):
    """HF transformers' causal LM of `preset`'s shape (random weights,
    eval mode), for eager PyTorch on every core."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    c = shape(preset)
    if c["norm"] != "rmsnorm":
        config = transformers.GPT2Config(
            vocab_size=c["vocabulary_size"],
            n_positions=c["max_sequence_length"],
            n_embd=c["hidden_dim"],
            n_layer=c["num_layers"],
            n_head=c["num_heads"],
            n_inner=c["intermediate_dim"],
        )
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig.from_dict(hf_config(preset, "llama"))
    return transformers.LlamaForCausalLM(config).eval()


def hf_config(preset: str, family: str, dtype: str = "float32") -> dict:
    """`config.json` of `family` at `preset`'s shape, with the fields
    transformers 5.x's `save_pretrained` writes."""
    c = shape(preset)
    if c["norm"] != "rmsnorm" or c["rope_scaling"] is not None:
        raise ValueError(f"{preset} is not a plain Llama shape.")
    if family not in LLAMA_FAMILIES or dtype not in DTYPES:
        raise ValueError(f"Received: family={family!r}, dtype={dtype!r}")
    config = dict(
        architectures=[
            {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[family]
            + "ForCausalLM"
        ],
        attention_dropout=0.0,
        bos_token_id=1,
        dtype=dtype,
        eos_token_id=2,
        hidden_act="silu",
        hidden_size=c["hidden_dim"],
        initializer_range=0.02,
        intermediate_size=c["intermediate_dim"],
        max_position_embeddings=c["max_sequence_length"],
        model_type=family,
        num_attention_heads=c["num_heads"],
        num_hidden_layers=c["num_layers"],
        num_key_value_heads=c["num_key_value_heads"],
        pad_token_id=None,
        rms_norm_eps=c["layer_norm_epsilon"],
        rope_parameters=dict(
            rope_theta=c["rope_max_wavelength"], rope_type="default"
        ),
        tie_word_embeddings=c["tie_embeddings"],
        transformers_version=TRANSFORMERS_VERSION,
        use_cache=True,
        vocab_size=c["vocabulary_size"],
    )
    if family == "qwen2":
        return dict(
            config,
            layer_types=["full_attention"] * c["num_layers"],
            max_window_layers=28,
            sliding_window=None,
            use_sliding_window=False,
        )
    config["head_dim"] = c["head_dim"]
    if family == "mistral":
        return dict(config, sliding_window=4096)
    return dict(config, attention_bias=False, mlp_bias=False, pretraining_tp=1)


def llama_tensors(preset: str, family: str) -> dict[str, tuple]:
    """`{name: shape}` of a Hugging Face checkpoint of `preset`'s shape;
    names ending in `norm.weight` hold ones, the rest N(0, 0.02)."""
    c = shape(preset)
    d, f = c["hidden_dim"], c["intermediate_dim"]
    q, kv = (
        c["num_heads"] * c["head_dim"],
        c["num_key_value_heads"] * c["head_dim"],
    )
    out = {"model.embed_tokens.weight": (c["vocabulary_size"], d)}
    for i in range(c["num_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (d,)
        for name, rows in (("q", q), ("k", kv), ("v", kv)):
            out[f"{p}self_attn.{name}_proj.weight"] = (rows, d)
            if family == "qwen2":
                out[f"{p}self_attn.{name}_proj.bias"] = (rows,)
        out[p + "self_attn.o_proj.weight"] = (d, q)
        out[p + "post_attention_layernorm.weight"] = (d,)
        out[p + "mlp.gate_proj.weight"] = (f, d)
        out[p + "mlp.up_proj.weight"] = (f, d)
        out[p + "mlp.down_proj.weight"] = (d, f)
    out["model.norm.weight"] = (d,)
    if not c["tie_embeddings"]:
        out["lm_head.weight"] = (c["vocabulary_size"], d)
    return out


def _bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 `x` rounded to nearest-even bfloat16, as uint16 bits."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _write_safetensors(path, names, shapes, dtype, rng) -> None:
    import safetensors

    arrays, specs = [], {}
    for name in names:
        if name.endswith("norm.weight"):
            x = np.ones(shapes[name], np.float32)
        else:
            x = rng.standard_normal(shapes[name], np.float32) * 0.02
        x = _bfloat16_bits(x) if dtype == "bfloat16" else x
        arrays.append(x)  # alive until the file is written
        specs[name] = safetensors.TensorSpec(
            dtype=dtype,
            shape=list(x.shape),
            data_ptr=x.ctypes.data,
            data_len=x.nbytes,
        )
    safetensors.serialize_file(specs, path, metadata={"format": "pt"})


def _shards(sizes: dict[str, int], shard_bytes: int | None) -> list[list]:
    """Tensor names grouped in order into shards of at most `shard_bytes`
    (a larger tensor gets a shard of its own)."""
    shards, total = [[]], 0
    for name, size in sizes.items():
        if shards[-1] and shard_bytes and total + size > shard_bytes:
            shards.append([])
            total = 0
        shards[-1].append(name)
        total += size
    return shards


class Written(NamedTuple):
    """What `write_llama_checkpoint` wrote."""

    parameter_bytes: int
    shards: int
    learned_merges: int


def write_llama_checkpoint(
    directory: str,
    preset: str,
    family: str = "llama",
    dtype: str = "float32",
    shard_bytes: int | None = None,
) -> Written:
    """A random-weight Hugging Face checkpoint of `preset`'s shape, with
    its tokenizer (see the module docstring), in `directory`."""
    config = hf_config(preset, family, dtype)
    shapes = llama_tensors(preset, family)
    sizes = {n: int(np.prod(s)) * DTYPES[dtype] for n, s in shapes.items()}
    shards = _shards(sizes, shard_bytes)
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    files = ["model.safetensors"]
    if len(shards) > 1:
        n = len(shards)
        files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": {
                x: f for f, s in zip(files, shards, strict=True) for x in s
            },
        }
        bpe_files.write_json(directory, "model.safetensors.index.json", index)
    for file, names in zip(files, shards, strict=True):
        path = os.path.join(directory, file)
        _write_safetensors(path, names, shapes, dtype, rng)
    generation = dict(
        _from_model_config=True,
        bos_token_id=1,
        eos_token_id=[2, 0] if family == "qwen2" else 2,
        transformers_version=TRANSFORMERS_VERSION,
    )
    bpe_files.write_json(directory, "generation_config.json", generation)
    learned = bpe_files.write_bpe_tokenizer(
        directory,
        config["vocab_size"],
        family,
        config["max_position_embeddings"],
    )
    bpe_files.write_json(directory, "config.json", config)  # last
    return Written(sum(sizes.values()), len(files), learned)
