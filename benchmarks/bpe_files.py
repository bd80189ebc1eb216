"""Byte-level BPE tokenizer files for the benchmarks' random checkpoints.

`write_bpe_tokenizer` writes a Hugging Face `tokenizer.json` (ByteLevel
pre-tokenizer and decoder; `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` as
ids 0-2) learned with the `tokenizers` library on the shared corpora
(`../shared/data/*.txt`, those present) and topped up with synthetic merges
to the model's vocabulary size, and a `tokenizer_config.json` with a ChatML
chat template.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import random
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
CORPORA = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "data", "*.txt")))
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'"
    " + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_json(directory: str, name: str, value) -> None:
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def synthetic_merges(tokens: list[str], merges: list, count: int) -> None:
    """Appends merges of random pairs of `tokens` (and the merged tokens to
    `tokens`) until `merges` holds `count`: a vocabulary of the full size
    when the corpora teach fewer merges."""
    known = set(tokens)
    rng = random.Random(0)
    while len(merges) < count:
        a, b = rng.choice(tokens), rng.choice(tokens)
        if a + b not in known and len(a + b) < 16:
            known.add(a + b)
            tokens.append(a + b)
            merges.append((a, b))


@functools.lru_cache(maxsize=4)
def _bpe_json(vocabulary_size: int) -> tuple[str, int]:
    """`(tokenizer.json text, learned merges)`: byte-level BPE learned on
    `CORPORA` (those present), special tokens first, topped up with
    synthetic merges to exactly `vocabulary_size` ids."""
    import tokenizers as hf

    byte_level = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained = hf.Tokenizer(hf.models.BPE())
    trained.pre_tokenizer = byte_level
    corpora = [p for p in CORPORA if os.path.isfile(p)]
    if corpora:
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocabulary_size,
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
        trained.train(corpora, trainer)
        model = json.loads(trained.to_str())["model"]
        merges = [
            tuple(m.split(" ") if isinstance(m, str) else m)
            for m in model["merges"]
        ]
        by_id = sorted(model["vocab"], key=model["vocab"].get)
        tokens = [t for t in by_id if t not in SPECIAL_TOKENS]
    else:
        merges, tokens = [], sorted(hf.pre_tokenizers.ByteLevel.alphabet())
    learned = len(merges)
    size = vocabulary_size - len(SPECIAL_TOKENS) - len(tokens)
    synthetic_merges(tokens, merges, learned + size)
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *tokens])}
    assert len(vocab) == vocabulary_size, len(vocab)
    bpe = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = byte_level
    bpe.decoder = hf.decoders.ByteLevel()
    bpe.add_special_tokens(
        [
            hf.AddedToken(t, special=True, normalized=False)
            for t in SPECIAL_TOKENS
        ]
    )
    with tempfile.TemporaryDirectory() as temp:
        path = os.path.join(temp, "tokenizer.json")
        bpe.save(path)
        with open(path, encoding="utf-8") as f:
            return f.read(), learned


def write_bpe_tokenizer(
    directory: str, vocabulary_size: int, family: str, max_length: int
) -> int:
    """Writes `tokenizer.json` and `tokenizer_config.json` (ChatML, ends at
    `<|im_end|>`); returns how many merges the corpora taught."""
    text, learned = _bpe_json(vocabulary_size)
    with open(
        os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8"
    ) as f:
        f.write(text)
    added = {
        str(i): dict(
            content=t,
            lstrip=False,
            normalized=False,
            rstrip=False,
            single_word=False,
            special=True,
        )
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    settings = dict(
        added_tokens_decoder=added,
        bos_token=None if family == "qwen2" else "<|im_start|>",
        chat_template=CHATML,
        clean_up_tokenization_spaces=False,
        eos_token="<|im_end|>",
        model_max_length=max_length,
        pad_token="<|endoftext|>",
        tokenizer_class="Qwen2Tokenizer"
        if family == "qwen2"
        else "GPT2Tokenizer",
    )
    write_json(directory, "tokenizer_config.json", settings)
    return learned
