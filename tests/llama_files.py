"""Writes small Llama, Qwen2 and Mistral checkpoints in the Hugging Face
layout, for tests.

The models are transformers' own classes with random weights drawn wider
than their init (so that greedy choices are never near ties), saved with
`save_pretrained`; the tokenizers are trained here (SentencePiece as Llama 2
and Mistral were, byte-level BPE as Llama 3, Qwen2 and SmolLM2 were); the
chat templates are the families' own Jinja, as their
`tokenizer_config.json` files hold them. Nothing here comes from tflm, so
the files are an independent input to the importer.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random

import sentencepiece
import tokenizers
import torch
import transformers

# The pre-tokenizer patterns of Llama 3 and Qwen2 (`tokenizer.json`).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

# The families' chat templates, verbatim from their tokenizer_config.json.
QWEN2_SYSTEM = "You are a helpful assistant."
SMOLLM2_SYSTEM = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
)
_CHATML_TURNS = (
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _chatml_with_system(system: str) -> str:
    return (
        "{% for message in messages %}{% if loop.first and messages[0]"
        "['role'] != 'system' %}{{ '<|im_start|>system\\n"
        + system
        + "<|im_end|>"
        "\\n' }}{% endif %}" + _CHATML_TURNS
    )


QWEN25_SYSTEM = (
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
)
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- '@SYSTEM@' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with \
the user query.\\n\\nYou are provided with function signatures within \
<tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with \
function name and arguments within <tool_call></tool_call> XML tags:\\n\
<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": \
<args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + \
'<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\n@SYSTEM@<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not \
loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + \
'<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \
"tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""".replace("@SYSTEM@", QWEN25_SYSTEM)

TEMPLATES = {
    # Qwen2-*-Instruct.
    "qwen2": _chatml_with_system(QWEN2_SYSTEM),
    # SmolLM2-*-Instruct.
    "smollm2": _chatml_with_system(SMOLLM2_SYSTEM),
    # Qwen2.5-*-Instruct: tool calls, and its own default system prompt.
    "qwen2.5": QWEN25_TEMPLATE,
    # ChatML without a default system prompt (SmolLM-Instruct).
    "chatml": "{% for message in messages %}" + _CHATML_TURNS,
    # Meta-Llama-3-8B-Instruct (3.0).
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' "
        "%}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
        "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    # Mistral-7B-Instruct-v0.1.
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] "
        "== 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('"
        "Conversation roles must alternate user/assistant/user/assistant/..."
        "') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
        "message['content'] + ' [/INST]' }}{% elif message['role'] == "
        "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ "
        "raise_exception('Only user and assistant roles are supported!') }}"
        "{% endif %}{% endfor %}"
    ),
    # TinyLlama-1.1B-Chat-v1.0 (Zephyr's).
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
    ),
    # Llama-2-*-chat: `<<SYS>>` inside the first `[INST]`, a format tflm
    # does not render.
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = "
        "messages[1:] %}{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% set system_message "
        "= false %}{% endif %}{% for message in loop_messages %}{% if "
        "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
        "raise_exception('Conversation roles must alternate user/assistant/"
        "user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and "
        "system_message != false %}{% set content = '<<SYS>>\\n' + "
        "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else "
        "%}{% set content = message['content'] %}{% endif %}{% if "
        "message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
        "content.strip() + ' [/INST]' }}{% elif message['role'] == "
        "'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
        "{% endif %}{% endfor %}"
    ),
}

WORDS = (
    "the quick brown fox jumps over lazy dog Hello world what is it The "
    "红楼梦 中文 世界 你好 的 了 是 café naïve 🙂 🚀 👍🏽 def return "
    "user assistant system answer briefly 2024 1,000 x = 1 [INST] [/INST] "
    "<|user|> <|assistant|> <|system|>"
).split(" ")
SEPARATORS = [" ", " ", " ", "  ", "\n", "\n\n", "\t"]


def corpus(lines: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        count = rng.randint(3, 12)
        words = [rng.choice(WORDS) for _ in range(count)]
        seps = [rng.choice(SEPARATORS) for _ in range(count - 1)] + [""]
        out.append("".join(w + s for w, s in zip(words, seps, strict=True)))
    return out


# SentencePiece ----------------------------------------------------------------
def _added(content: str) -> dict:
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


SENTENCEPIECE_CONFIGS = {
    # Llama-2-*-hf.
    "llama2": {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": _added("</s>"),
        "legacy": False,
        "pad_token": None,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _added("<unk>"),
    },
    # Mistral-7B-Instruct-v0.1.
    "mistral": {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": True,
        "pad_token": None,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    },
    # TinyLlama-1.1B-Chat-v1.0.
    "zephyr": {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "legacy": False,
        "pad_token": "</s>",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    },
}


def sentencepiece_model(vocab_size: int = 400) -> bytes:
    """A `tokenizer.model` trained as Llama 2's was (BPE, byte fallback,
    split digits, identity normalization, unk 0, bos 1, eos 2, no pad)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.99,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def write_sentencepiece(
    directory: str, model: bytes, style: str, template: str | None = None
) -> None:
    """`tokenizer.model` and a `tokenizer_config.json` shaped like
    `style`'s (`SENTENCEPIECE_CONFIGS`), with chat template `template`."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(model)
    config = dict(SENTENCEPIECE_CONFIGS[style])
    if template is not None:
        config["chat_template"] = TEMPLATES[template]
    write_json(directory, "tokenizer_config.json", config)


# Byte-level BPE ---------------------------------------------------------------
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BPE_CONFIGS = {
    "llama3": {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    },
    "qwen2": {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    },
    "smollm2": {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "add_bos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    },
}


def _pretokenizer(style: str):
    pre = tokenizers.pre_tokenizers
    if style == "smollm2":
        return pre.Sequence(
            [
                pre.Digits(individual_digits=True),
                pre.ByteLevel(add_prefix_space=False),
            ]
        )
    pattern = LLAMA3_PATTERN if style == "llama3" else QWEN2_PATTERN
    return pre.Sequence(
        [
            pre.Split(tokenizers.Regex(pattern), behavior="isolated"),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def write_bpe(
    directory: str,
    style: str,
    template: str | None = None,
    vocab_size: int = 360,
) -> int:
    """`tokenizer.json` and `tokenizer_config.json` of a byte-level BPE
    trained as `style` (`llama3`, `qwen2` or `smollm2`) trains it, with chat
    template `template`. Returns the vocabulary size."""
    os.makedirs(directory, exist_ok=True)
    specials = LLAMA3_SPECIALS if style == "llama3" else CHATML_SPECIALS
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.BPE(ignore_merges=style == "llama3")
    )
    tokenizer.pre_tokenizer = _pretokenizer(style)
    if style == "qwen2":
        tokenizer.normalizer = tokenizers.normalizers.NFC()
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=specials,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    if style == "llama3":
        tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            special_tokens=[("<|begin_of_text|>", 0)],
        )
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    config = dict(BPE_CONFIGS[style])
    if template is not None:
        config["chat_template"] = TEMPLATES[template]
    write_json(directory, "tokenizer_config.json", config)
    return tokenizer.get_vocab_size()


# Models -----------------------------------------------------------------------
SIZES = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def config(family: str, vocab_size: int, **changes):
    """A transformers config of `family`: `llama` (untied, Llama 3.1 rope
    scaling, head_dim 12 != 32 / 4), `llama_tied` (Llama 2: tied, plain
    rope), `qwen2` (q/k/v biases, tied) or `mistral` (sliding window 32 of
    64 positions)."""
    sizes = dict(SIZES, vocab_size=vocab_size)
    if family == "llama":
        sizes.update(
            rope_parameters=dict(LLAMA3_ROPE),
            tie_word_embeddings=False,
            head_dim=12,
        )
        cls = transformers.LlamaConfig
    elif family == "llama_tied":
        sizes.update(tie_word_embeddings=True)
        cls = transformers.LlamaConfig
    elif family == "qwen2":
        sizes.update(tie_word_embeddings=True)
        cls = transformers.Qwen2Config
    elif family == "mistral":
        sizes.update(sliding_window=32, tie_word_embeddings=False)
        cls = transformers.MistralConfig
    else:
        raise ValueError(f"Unknown family {family!r}.")
    return cls(**{**sizes, **changes})


def random_model(config, seed: int = 0):
    """transformers' model of `config`, weights normal(0, 0.3) and norms
    normal(1, 0.1): wide enough that greedy choices are not near ties."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.3)
    return model.eval()


def save(model, directory: str, dtype=None, max_shard_size=None) -> None:
    """`save_pretrained`, in `dtype` (a copy) and shards if given."""
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    kwargs = (
        {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    )
    model.save_pretrained(directory, **kwargs)


def write_json(directory: str, name: str, value) -> None:
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)


def read_json(directory: str, name: str):
    with open(os.path.join(directory, name), encoding="utf-8") as f:
        return json.load(f)


def as_transformers4(directory: str, keys=("rope_type",)) -> None:
    """Rewrites `config.json` as transformers 4.x wrote it: top-level
    `rope_theta`, `rope_scaling` naming its kind under `keys` (4.43+ wrote
    `rope_type`, earlier versions `type`) and `torch_dtype`."""
    config = read_json(directory, "config.json")
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    kind = rope.pop("rope_type", "default")
    config["rope_scaling"] = (
        None if kind == "default" else {**rope, **dict.fromkeys(keys, kind)}
    )
    config["torch_dtype"] = config.pop("dtype", "float32")
    config["transformers_version"] = "4.45.2"
    write_json(directory, "config.json", config)


# Checkpoints ------------------------------------------------------------------
# family -> (architecture, tokenizer kind, tokenizer style, chat template)
CHECKPOINTS = {
    # Llama 3.x: byte-level BPE, `<|eot_id|>` in the eos list.
    "llama": ("llama", "bpe", "llama3", "llama3"),
    # Llama 2 / TinyLlama: SentencePiece, tied head, Zephyr's template.
    "llama_tied": ("llama_tied", "sentencepiece", "zephyr", "zephyr"),
    "qwen2": ("qwen2", "bpe", "qwen2", "qwen2"),
    "mistral": ("mistral", "sentencepiece", "mistral", "mistral"),
}
# More checkpoints, one per chat format (`write_checkpoint` takes these
# names too).
FORMAT_CHECKPOINTS = {
    "qwen2": CHECKPOINTS["qwen2"],
    "qwen2.5": ("qwen2", "bpe", "qwen2", "qwen2.5"),
    "smollm2": ("llama_tied", "bpe", "smollm2", "smollm2"),
    "chatml": ("llama_tied", "bpe", "qwen2", "chatml"),
    "llama3": CHECKPOINTS["llama"],
    "mistral": CHECKPOINTS["mistral"],
    "zephyr": CHECKPOINTS["llama_tied"],
}
# Token ids of the tokenizers above: (bos, eos); `None`: no bos.
SPECIAL_IDS = {
    "llama3": (0, 1),
    "qwen2": (None, 2),
    "smollm2": (1, 2),
    "sentencepiece": (1, 2),
}
BPE_VOCABULARY = 384  # above the tokenizer's 360 ids, as Qwen2 pads it
LLAMA3_EOT = LLAMA3_SPECIALS.index("<|eot_id|>")
LLAMA3_END = LLAMA3_SPECIALS.index("<|end_of_text|>")


def write_checkpoint(
    directory: str,
    name: str,
    *,
    sentencepiece_bytes: bytes | None = None,
    template: str | None = "default",
    model=None,
    dtype=None,
    max_shard_size=None,
):
    """Writes checkpoint `name` (of `CHECKPOINTS` or `FORMAT_CHECKPOINTS`)
    in `directory`; returns its transformers model. `template`: a
    `TEMPLATES` name, `None` for none, `"default"` for the checkpoint's;
    `model`: weights to write instead of random ones."""
    family, kind, style, default = {**FORMAT_CHECKPOINTS, **CHECKPOINTS}[name]
    template = default if template == "default" else template
    if kind == "bpe":
        write_bpe(directory, style, template)
        vocabulary = BPE_VOCABULARY
        bos, eos = SPECIAL_IDS[style]
    else:
        if sentencepiece_bytes is None:
            sentencepiece_bytes = sentencepiece_model()
        write_sentencepiece(directory, sentencepiece_bytes, style, template)
        vocabulary = 400
        bos, eos = SPECIAL_IDS["sentencepiece"]
    if model is None:
        model = random_model(
            config(family, vocabulary, bos_token_id=bos, eos_token_id=eos)
        )
    save(model, directory, dtype=dtype, max_shard_size=max_shard_size)
    if style == "llama3":
        write_json(
            directory,
            "generation_config.json",
            {"bos_token_id": bos, "eos_token_id": [LLAMA3_END, LLAMA3_EOT]},
        )
    return model
