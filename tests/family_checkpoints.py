"""Writes tiny Llama-family checkpoints in the Hugging Face layout, for the
serving and fine-tuning tests.

- `write_chatml`: a Qwen2 model (q/k/v biases, untied head) with a
  byte-level BPE `tokenizer.json` trained by `tokenizers` (Qwen2's
  pre-tokenizer, `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`) and Qwen2's
  ChatML `chat_template` (default system prompt included). The end of text
  is `<|endoftext|>`: `<|im_end|>` ends a reply only as the template's end
  token. Optionally the head is set so that `<|im_end|>` is the greedy
  choice after a given number of reply tokens for one conversation.
- `write_llama`: a Llama model (grouped-query heads) with a byte-fallback
  SentencePiece `tokenizer.model` and the Mistral v0.1 `[INST]` template.

Weights are random (seeded) and large enough that greedy text varies.
Nothing here comes from tflm: the files are an independent input.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import sentencepiece
import tokenizers
import torch
import transformers

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen2's `tokenizer.json` pre-tokenizer pattern.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2-Instruct's `chat_template`.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] "
    "!= 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant."
    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' "
    "+ message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Mistral-7B-Instruct-v0.1's `chat_template`.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
    "roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
    "message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
    "user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
WORDS = (
    "the cat dog fox sun moon red blue green what is say please now tell me "
    "a word of colour sky grass you are helpful assistant hello there "
    "answer briefly and then why how many"
).split()
SENTENCEPIECE_SIZE = 420
SIZE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def corpus(extra: tuple[str, ...] = ()) -> list[str]:
    """Lines to train the tokenizers on: random word runs, the template
    texts, and `extra` lines."""
    rng = random.Random(0)
    lines = [" ".join(rng.choices(WORDS, k=8)) for _ in range(300)]
    lines += ["You are a helpful assistant.", "[INST] hello [/INST]"] * 20
    lines += ["héllo wörld 🙂, 12 + 30 = 42?"] * 5
    return lines + list(extra) * 20


def write_bpe_tokenizer(directory: str, vocab_size: int = 400) -> None:
    """A Qwen2-style byte-level BPE `tokenizer.json` and its config."""
    pre = tokenizers.pre_tokenizers
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.normalizer = tokenizers.normalizers.NFC()
    tokenizer.pre_tokenizer = pre.Sequence(
        [
            pre.Split(
                tokenizers.Regex(QWEN2_PATTERN),
                behavior="isolated",
                invert=False,
            ),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre.ByteLevel.alphabet(),
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": ENDOFTEXT,
        "pad_token": ENDOFTEXT,
        "chat_template": CHATML_TEMPLATE,
    }
    _write_json(os.path.join(directory, "tokenizer_config.json"), config)


def write_sentencepiece_tokenizer(directory: str) -> None:
    """A byte-fallback SentencePiece `tokenizer.model` (Llama's ids: unk 0,
    `<s>` 1, `</s>` 2) with a Mistral `[INST]` template."""
    text = os.path.join(directory, "corpus.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus()))
    sentencepiece.SentencePieceTrainer.train(
        input=text,
        model_prefix=os.path.join(directory, "tokenizer"),
        vocab_size=SENTENCEPIECE_SIZE,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    os.remove(text)
    os.remove(os.path.join(directory, "tokenizer.vocab"))
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": False,
        "chat_template": MISTRAL_TEMPLATE,
    }
    _write_json(os.path.join(directory, "tokenizer_config.json"), config)


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def _randomize(model, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.3)


def hf_tokenizer(directory: str):
    """The checkpoint's tokenizer as transformers loads it."""
    return transformers.AutoTokenizer.from_pretrained(directory)


def chat_ids(directory: str, messages, generation: bool = True) -> list:
    """transformers' ids of `messages` in the checkpoint's template."""
    tokenizer = hf_tokenizer(directory)
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def write_chatml(directory: str, stop=None, seed: int = 0) -> str:
    """A Qwen2 checkpoint with a ChatML template in `directory`.

    Args:
        directory: an empty folder.
        stop: `(messages, k)`: make `<|im_end|>` the greedy token after `k`
            reply tokens of `messages` (and never before), by setting its
            row of the (untied) head to the part of the final hidden state
            at that step that is orthogonal to the earlier steps'.
        seed: for the random weights.

    Returns:
        `directory`.
    """
    os.makedirs(directory, exist_ok=True)
    write_bpe_tokenizer(directory)
    vocab = tokenizers.Tokenizer.from_file(
        os.path.join(directory, "tokenizer.json")
    )
    config = transformers.Qwen2Config(
        vocab_size=vocab.get_vocab_size() + 4,  # padded, as Qwen2's are
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=vocab.token_to_id(ENDOFTEXT),
        **SIZE,
    )
    model = transformers.Qwen2ForCausalLM(config)
    _randomize(model, seed)
    if stop is not None:
        messages, k = stop
        _end_after(model, chat_ids(directory, messages), k, IM_END, vocab)
    model.save_pretrained(directory)
    return directory


def _end_after(model, prompt, k: int, token: str, vocab) -> None:
    end = vocab.token_to_id(token)
    head = model.lm_head.weight
    with torch.no_grad():
        head[end] = 0.0
        ids = torch.tensor([prompt])
        out = model.generate(
            ids, max_new_tokens=k, do_sample=False, pad_token_id=0
        )
        hidden = model(out, output_hidden_states=True).hidden_states[-1][0]
        steps = hidden[len(prompt) - 1 :].double().numpy()  # [k + 1, D]
        basis, _ = np.linalg.qr(steps[:k].T)
        target = steps[k] - basis @ (basis.T @ steps[k])
        target /= np.linalg.norm(target)
        logits = model(out).logits[0, -1].double()
        margin = float(logits.max()) + 2.0
        row = target * margin / float(target @ steps[k])
        head[end] = torch.tensor(row, dtype=head.dtype)
        check = model.generate(
            ids, max_new_tokens=k + 1, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
    assert check == [*out[0, len(prompt) :].tolist(), end], check


def write_llama(directory: str, seed: int = 6) -> str:
    """A Llama checkpoint with a SentencePiece tokenizer and the Mistral
    `[INST]` template in `directory`; returns `directory`."""
    os.makedirs(directory, exist_ok=True)
    write_sentencepiece_tokenizer(directory)
    config = transformers.LlamaConfig(
        vocab_size=SENTENCEPIECE_SIZE,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        **SIZE,
    )
    model = transformers.LlamaForCausalLM(config)
    _randomize(model, seed)
    model.save_pretrained(directory)
    return directory
