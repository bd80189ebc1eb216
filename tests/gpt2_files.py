"""Writes small GPT-2 checkpoints in the Hugging Face layout, for tests.

Only numpy, `regex` and `safetensors` are used: nothing here comes from
tflm, so the files are an independent input to the importer.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import regex
from safetensors import numpy as safetensors_numpy

GPT2_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
    r"|\s+(?!\S)|\s+"
)
TEXTS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "It's a test: we're testing the tokenizer, and they'll see it.",
    "Hello world! Hello there, hello again.\n\nNew paragraph here.",
    "今天天气很好。我们去公园散步吧。天气很好!",
    "I love pizza 🍕🍕 and cats 🐱! 👍 Great 🎉🎉",
    "Numbers 12345 and 2024, prices $9.99 and 100%.",
]


def byte_chars() -> list[str]:
    """GPT-2's printable character for each byte, by byte value."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def train_bpe(texts=TEXTS, num_merges: int = 80):
    """Returns `(vocab dict, merges list)` learned from `texts`."""
    chars = byte_chars()
    words = collections.Counter(
        tuple(chars[b] for b in piece.encode())
        for text in texts
        for piece in regex.findall(GPT2_PATTERN, text)
    )
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    tokens = chars + [a + b for a, b in merges] + ["<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return vocab, [f"{a} {b}" for a, b in merges]


def write_tokenizer(directory: str, vocab=None, merges=None) -> None:
    if vocab is None:
        vocab, merges = train_bpe()
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))


def hf_config(vocab_size: int, **overrides) -> dict:
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab_size,
        "n_positions": 32,
        "n_ctx": 32,
        "n_embd": 16,
        "n_layer": 2,
        "n_head": 2,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "bos_token_id": vocab_size - 1,
        "eos_token_id": vocab_size - 1,
    }
    config.update(overrides)
    return config


def random_weights(config: dict, seed: int = 0, prefix: str = "") -> dict:
    """Random GPT-2 tensors by Hugging Face name (Conv1D: input-major)."""
    rng = np.random.default_rng(seed)
    d, v = config["n_embd"], config["vocab_size"]
    inner = config.get("n_inner") or 4 * d
    ctx = config["n_positions"]

    def normal(*shape, std=0.2):
        return rng.normal(0, std, shape).astype(np.float32)

    tensors = {
        "wte.weight": normal(v, d, std=0.5),
        "wpe.weight": normal(ctx, d),
    }
    for i in range(config["n_layer"]):
        h = f"h.{i}."
        for norm in ("ln_1", "ln_2"):
            tensors[h + norm + ".weight"] = 1 + normal(d, std=0.1)
            tensors[h + norm + ".bias"] = normal(d, std=0.1)
        for name, shape in (
            ("attn.c_attn", (d, 3 * d)),
            ("attn.c_proj", (d, d)),
            ("mlp.c_fc", (d, inner)),
            ("mlp.c_proj", (inner, d)),
        ):
            tensors[h + name + ".weight"] = normal(*shape, std=0.4)
            tensors[h + name + ".bias"] = normal(shape[1], std=0.1)
        # Buffers that some exports keep; the importer ignores them.
        tensors[h + "attn.bias"] = np.tril(
            np.ones((1, 1, ctx, ctx), np.float32)
        )
    tensors["ln_f.weight"] = 1 + normal(d, std=0.1)
    tensors["ln_f.bias"] = normal(d, std=0.1)
    return {prefix + k: v for k, v in tensors.items()}


def write_checkpoint(
    directory: str, seed: int = 0, prefix: str = "", **config_overrides
) -> dict:
    """Writes a random GPT-2 in `directory`; returns its tensors by name."""
    os.makedirs(directory, exist_ok=True)
    vocab, merges = train_bpe()
    write_tokenizer(directory, vocab, merges)
    config = hf_config(len(vocab), **config_overrides)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tensors = random_weights(config, seed, prefix)
    safetensors_numpy.save_file(
        tensors,
        os.path.join(directory, "model.safetensors"),
        metadata={"format": "pt"},
    )
    return tensors


def write_checkpoint_ending_like(
    directory: str, token: int, scale: float
) -> int:
    """Writes a random GPT-2 whose end-of-text embedding (tied to its logit)
    is `scale` times token `token`'s, so that generation ends early or at
    varied lengths; returns the end-of-text id."""
    tensors = write_checkpoint(directory)
    with open(os.path.join(directory, "config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    tensors["wte.weight"][eos] = scale * tensors["wte.weight"][token]
    safetensors_numpy.save_file(
        tensors,
        os.path.join(directory, "model.safetensors"),
        metadata={"format": "pt"},
    )
    return eos
