"""A checkpoint's Jinja chat template, recognised as one of tflm's formats.

The template (`chat_template` in `tokenizer_config.json`, or
`chat_template.jinja`) is rendered with Jinja on probe conversations, with
and without a system turn, and compared with each format's own rendering
(`tflm.tokenizers.templates.render_text`); a default system prompt the
template adds is read off its rendering of a conversation without one.
Only an exact match is accepted: a template that matches no format is an
error naming the formats, never a silent fallback.
"""

from __future__ import annotations

import datetime
import json
import os

from tflm import errors
from tflm.tokenizers import hf_files
from tflm.tokenizers import templates

CONFIG_FILE = hf_files.TOKENIZER_CONFIG_FILE
JINJA_FILE = "chat_template.jinja"
NAMES = ("chatml", "llama3", "mistral", "zephyr", "tflm", "none")
_PROBES = (
    [{"role": "user", "content": "Hello there"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ],
)


def read(path: str) -> str | None:
    """The checkpoint's Jinja chat template, or `None`."""
    jinja = os.path.join(path, JINJA_FILE)
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        return None
    template = hf_files.read_json(config_path).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _render(source: str, messages, bos: str, eos: str) -> str:
    import jinja2.sandbox

    def fail(message):
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(form):
        return datetime.datetime.now().strftime(form)

    # As transformers renders chat templates.
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
    )
    environment.globals["raise_exception"] = fail
    environment.globals["strftime_now"] = strftime_now
    return environment.from_string(source).render(
        messages=messages,
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=True,
    )


def recognise(source: str, bos: str, eos: str, where: str) -> dict:
    """The template record of the format `source` renders as.

    Raises:
        InputError: it matches no format (the message names how to choose).
    """
    try:
        _render(source, _PROBES[0], bos, eos)
        failure = ""
    except Exception as err:  # noqa: BLE001 - reported, not raised
        failure = f" (rendering it failed: {type(err).__name__}: {err})"
    # tflm's own comes back from `tflm export --format huggingface`.
    for name in ("chatml", "llama3", "zephyr", "mistral", templates.NAME):
        record = _match(source, name, bos, eos)
        if record is not None:
            return record
    raise errors.InputError(
        f"{where}: the chat template matches none of the formats tflm "
        "renders (ChatML, Llama 3, Mistral [INST], Zephyr, tflm's ### User:)"
        f"{failure}. Choose one with --chat-template "
        "chatml|llama3|mistral|zephyr|tflm, or --chat-template none for "
        "plain-text prompts."
    )


def _match(source: str, name: str, bos: str, eos: str) -> dict | None:
    record = templates.record(name)
    try:
        alone = _render(source, _PROBES[0], bos, eos)
    except Exception:  # noqa: BLE001 - any Jinja failure is "no match"
        return None
    system = _default_system(name, alone, bos, eos)
    if system:
        record = templates.record(name, system)
    form = templates.FORMATS[name]
    for probe in _PROBES:
        if not form.system:
            probe = [m for m in probe if m["role"] != "system"]
        try:
            theirs = _render(source, probe, bos, eos)
        except Exception:  # noqa: BLE001
            return None
        if theirs != templates.render_text(record, probe, bos, eos):
            return None
    return record


def _default_system(name: str, rendered: str, bos: str, eos: str):
    """The system prompt a template adds to a conversation without one."""
    if name != "chatml":
        return None
    head = "<|im_start|>system\n"
    if not rendered.startswith(head):
        return None
    return rendered[len(head) : rendered.find("<|im_end|>")] or None


def from_checkpoint(path: str, tokenizer, choice: str | None) -> dict | None:
    """The template record of checkpoint `path`, or `None` (no template).

    Args:
        path: the checkpoint directory.
        tokenizer: its tokenizer (control tokens the template needs).
        choice: a name of `NAMES` that overrides recognition.

    Raises:
        InputError: an unknown `choice`, a template that matches no format,
            or a tokenizer without the template's control tokens.
    """
    config_path = os.path.join(path, CONFIG_FILE)
    config = {}
    if os.path.isfile(config_path):
        config = hf_files.read_json(config_path)
    if choice is not None:
        if choice not in NAMES:
            raise errors.InputError(
                f"--chat-template must be one of {', '.join(NAMES)}. "
                f"Received: {choice!r}."
            )
        if choice == "none":
            return None
        record = templates.record(
            templates.NAME if choice == "tflm" else choice
        )
    else:
        source = read(path)
        if source is None:
            return None
        bos, eos = (
            hf_files.token_text(config.get(key), key, config_path) or ""
            for key in ("bos_token", "eos_token")
        )
        where = os.path.join(path, JINJA_FILE)
        if not os.path.isfile(where):
            where = config_path
        record = recognise(source, bos, eos, where)
    templates.check_tokenizer(record, tokenizer)
    return json.loads(json.dumps(record))
