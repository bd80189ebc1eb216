"""Chat templates: conversations to token ids, the same in training and
generation, in Python and in the graph.

A conversation is a list of `{"role", "content"}` turns (roles `system`,
`user`, `assistant`); a prompt/completion example is the conversation
`[user: prompt, assistant: completion]`. A template is a `Format` (data,
not code): what starts a conversation, what comes before and after each
role's content, and the generation prompt that opens a reply. Formats:

- `tflm-chat-v1`, tflm's own, for models trained from scratch: plain-text
  headers (`### User:\\n`) that any tokenizer renders, the start id once and
  the end id after each reply.
- `chatml` (Qwen2, SmolLM2): `<|im_start|>user\\n...<|im_end|>\\n`, with the
  checkpoint's default system prompt when a conversation has none.
- `llama3`: `<|begin_of_text|>`, `<|start_header_id|>user<|end_header_id|>
  \\n\\n` + trimmed content + `<|eot_id|>`.
- `mistral` (Mistral v0.1, the `[INST]` form): `<s>[INST] ... [/INST]`,
  replies end with `</s>`; no system role.
- `zephyr` (TinyLlama chat): `<|user|>\\n...</s>\\n`, generation prompt
  `<|assistant|>\\n`.

Rendering lays a conversation out as cells, each either text or one control
token placed by id (`tokenizer.special_tokens`): text is never parsed for
control tokens, so user content cannot forge one. Consecutive text cells are
tokenized as one piece, as Hugging Face tokenizes the text between control
tokens; in training each reply is a piece of its own (what generation
produces after the prompt), and the loss is taken on the reply and the
control token that ends it. `tflm.tokenizers.template_render` does this in
the graph (core string and ragged ops, so exported signatures run it under
TF Serving); its `encode` and `encode_prompt` call it eagerly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from tflm import errors
from tflm.tokenizers import gpt2_bpe_ops

NAME = "tflm-chat-v1"
ROLES = ("system", "user", "assistant")
PADDING = ""  # The role of a padding turn.
BOS, EOS = "<bos>", "<eos>"  # The tokenizer's start and end ids.
# What Jinja's `trim` (Python's `str.strip`) removes: Unicode White_Space
# and the separators U+001C-U+001F.
TRIM = gpt2_bpe_ops.WS + r"\x1c-\x1f"


class Special(NamedTuple):
    """A control token in a format, by its text (or `BOS` / `EOS`)."""

    token: str


class Format(NamedTuple):
    """A chat template as data.

    Fields:
        start: parts before the first turn.
        before: role -> parts before its content.
        after: role -> parts after its content; for the assistant, the
            first part is the control token that ends a reply.
        trim: strip whitespace around content (Llama 3's `| trim`).
        system: whether a system turn may occur.
        joined: tokenize the text between control tokens as one piece in a
            prompt, as Hugging Face does; `False` (tflm's own) keeps earlier
            replies pieces of their own, as in training.
    A part is a `str` or a `Special`. The generation prompt is
    `before["assistant"]`.
    """

    start: tuple
    before: Mapping
    after: Mapping
    trim: bool = False
    system: bool = True
    joined: bool = True

    @property
    def generation(self) -> tuple:
        """The parts that open a reply (the generation prompt)."""
        return self.before["assistant"]


def _chatml() -> Format:
    im_start, im_end = Special("<|im_start|>"), Special("<|im_end|>")
    return Format(
        start=(),
        before={r: (im_start, f"{r}\n") for r in ROLES},
        after={r: (im_end, "\n") for r in ROLES},
    )


def _llama3() -> Format:
    def header(role):
        return (
            Special("<|start_header_id|>"),
            role,
            Special("<|end_header_id|>"),
            "\n\n",
        )

    return Format(
        start=(Special(BOS),),
        before={r: header(r) for r in ROLES},
        after={r: (Special("<|eot_id|>"),) for r in ROLES},
        trim=True,
    )


def _mistral() -> Format:
    return Format(
        start=(Special(BOS),),
        before={"system": (), "user": ("[INST] ",), "assistant": ()},
        after={
            "system": (),
            "user": (" [/INST]",),
            "assistant": (Special(EOS),),
        },
        system=False,
    )


def _zephyr() -> Format:
    return Format(
        start=(),
        before={r: (f"<|{r}|>\n",) for r in ROLES},
        after={r: (Special(EOS), "\n") for r in ROLES},
    )


def _tflm() -> Format:
    headers = {r: f"### {r.capitalize()}:\n" for r in ROLES}
    return Format(
        start=(Special(BOS),),
        before={r: (headers[r],) for r in ROLES},
        after={
            "system": ("\n",),
            "user": ("\n",),
            "assistant": (Special(EOS), "\n"),
        },
        joined=False,
    )


FORMATS = {
    NAME: _tflm(),
    "chatml": _chatml(),
    "llama3": _llama3(),
    "mistral": _mistral(),
    "zephyr": _zephyr(),
}
# `tflm-chat-v1` as `config.json["template"]` records it (the fields other
# than `name` are what older tflm versions read).
TEMPLATE = {
    "name": NAME,
    "headers": {r: FORMATS[NAME].before[r][0] for r in ROLES},
    "turn_end": "\n",
    "bos": True,
    "eos_after_assistant": True,
}


def record(name: str, default_system: str | None = None) -> dict:
    """What a model directory records for format `name`."""
    if name == NAME:
        return dict(TEMPLATE)
    entry = {"name": name}
    if default_system:
        entry["default_system"] = default_system
    return entry


def check(template) -> dict | None:
    """`template` (a `config.json["template"]` record) checked, or `None`.

    Raises:
        InputError: a template this tflm cannot apply.
    """
    if template is None:
        return None
    name = template.get("name") if isinstance(template, Mapping) else None
    if name not in FORMATS:
        raise errors.InputError(
            f"Unknown chat template {name!r} in the model's config.json; "
            f"this tflm applies {', '.join(FORMATS)}. Upgrade tflm."
        )
    if name == NAME and any(
        template.get(key, value) != value for key, value in TEMPLATE.items()
    ):
        raise errors.InputError(
            f"The model's config.json records a {NAME} template with other "
            f"headers or ids than this tflm renders ({TEMPLATE}); restore "
            "config.json from the model's training run."
        )
    system = template.get("default_system")
    if system is not None and not isinstance(system, str):
        raise errors.InputError(
            f"The chat template's default_system must be text. Received: "
            f"{system!r}."
        )
    return dict(template)


def check_tokenizer(template: Mapping, tokenizer) -> None:
    """InputError unless `tokenizer` has every control token `template`
    places."""
    form = FORMATS[template["name"]]
    parts = list(form.start)
    for role in ROLES:
        parts += [*form.before[role], *form.after[role]]
    for part in parts:
        if isinstance(part, Special):
            token_id(tokenizer, part.token)


def end_tokens(template: Mapping) -> list[str]:
    """The control token that ends a reply (`Special.token`)."""
    return [FORMATS[template["name"]].after["assistant"][0].token]


def token_id(tokenizer, token: str) -> int:
    """The id of control token `token` (`BOS`, `EOS` or a special).

    Raises:
        InputError: the tokenizer lacks it.
    """
    if token == BOS:
        return int(tokenizer.bos_id)
    if token == EOS:
        return int(tokenizer.eos_id)
    specials = tokenizer.special_tokens
    if token not in specials:
        raise errors.InputError(
            f"The chat template needs the control token {token!r}, which the "
            "tokenizer does not have: import the checkpoint again with the "
            "template of its family (tflm import --chat-template)."
        )
    return int(specials[token])


def render_text(template: Mapping, messages, bos="", eos="") -> str:
    """The prompt text of `messages` (what a Jinja chat template renders
    with `add_generation_prompt=True`), control tokens written out; for
    recognising a checkpoint's template."""
    form = FORMATS[template["name"]]
    names = {BOS: bos, EOS: eos}

    def text(parts):
        return "".join(
            names.get(p.token, p.token) if isinstance(p, Special) else p
            for p in parts
        )

    out = text(form.start)
    for message in _with_default(template, messages):
        content = message["content"]
        role = message["role"]
        out += text(form.before[role])
        out += content.strip() if form.trim else content
        out += text(form.after[role])
    return out + text(form.generation)


def _with_default(template, messages):
    system = template.get("default_system")
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)
