"""A model's chat template as the Jinja source Hugging Face tokenizers run.

tflm keeps a chat template as data (`tflm.tokenizers.templates`); a model
written in the Hugging Face layout carries it as `chat_template.jinja`, so
that `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`
renders the text tflm renders. The published families' templates keep the
shape of the families' own Jinja (Qwen2's ChatML, Meta-Llama-3-Instruct,
Mistral-7B-Instruct-v0.1, TinyLlama's Zephyr), so that the importer
(`tflm.importers.chat_templates`) recognises them again. The start and end
tokens are the `bos_token` and `eos_token` transformers passes to the
template, never written into it. Roles tflm does not render (`tool`) stop
the template with `raise_exception`, as tflm refuses them; Mistral's
template refuses a system turn and roles that do not alternate, as the
original does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from tflm import errors
from tflm.tokenizers import templates

# Stops a template at a role tflm does not render.
_ROLE_CHECK = (
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Only system, user and assistant roles are "
    "supported!') }}{% endif %}"
)
_GENERATION = "{% if add_generation_prompt %}{{ @PROMPT@ }}{% endif %}"


def _default_system(system: str | None, turn: str) -> str:
    """The system turn `turn` (a Jinja expression of `system`) rendered
    before a conversation that does not start with one."""
    if not system:
        return ""
    return (
        "{% if not messages or messages[0]['role'] != 'system' %}"
        "{{ " + turn.replace("@SYSTEM@", _literal(system)) + " }}{% endif %}"
    )


def _literal(text: str) -> str:
    """`text` as a Jinja string literal (Jinja reads Python's escapes)."""
    return json.dumps(text, ensure_ascii=False)


def _chatml(system: str | None) -> str:
    # Qwen2-Instruct's, the default system turn before the loop (so that
    # an empty conversation gets it too, as tflm renders it).
    return (
        _default_system(
            system, "'<|im_start|>system\\n' + @SYSTEM@ + '<|im_end|>\\n'"
        )
        + "{% for message in messages %}"
        + _ROLE_CHECK
        + "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
        "+ '<|im_end|>' + '\\n'}}{% endfor %}"
        + _GENERATION.replace("@PROMPT@", "'<|im_start|>assistant\\n'")
    )


def _llama3(system: str | None) -> str:
    # Meta-Llama-3-8B-Instruct's, `bos_token` before the loop (so that an
    # empty conversation gets it too, as tflm renders it).
    return (
        "{{ bos_token }}"
        + _default_system(
            system,
            "'<|start_header_id|>system<|end_header_id|>\\n\\n' + "
            "@SYSTEM@ | trim + '<|eot_id|>'",
        )
        + "{% for message in messages %}"
        + _ROLE_CHECK
        + "{% set content = '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' "
        "%}{{ content }}{% endfor %}"
        + _GENERATION.replace(
            "@PROMPT@", "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'"
        )
    )


# Mistral-7B-Instruct-v0.1's, verbatim.
_MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
    "roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
    "message['content'] + eos_token}}{% else %}{{ raise_exception('Only "
    "user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def _mistral(system: str | None) -> str:
    del system  # `jinja` refuses one: the format has no system role.
    return _MISTRAL


def _zephyr(system: str | None) -> str:
    # TinyLlama-1.1B-Chat-v1.0's, written on one line; the generation
    # prompt after the loop (an empty conversation gets it too).
    return (
        _default_system(
            system, "'<|system|>\\n' + @SYSTEM@ + eos_token + '\\n'"
        )
        + "{% for message in messages %}"
        + _ROLE_CHECK
        + "{{ '<|' + message['role'] + '|>\\n' + message['content'] "
        "+ eos_token + '\\n' }}{% endfor %}"
        + _GENERATION.replace("@PROMPT@", "'<|assistant|>\\n'")
    )


def _tflm(system: str | None) -> str:
    # tflm-chat-v1: the start token once, the end token after each reply.
    headers = {r: templates.TEMPLATE["headers"][r] for r in templates.ROLES}
    ends = {
        "system": "'\\n'",
        "user": "'\\n'",
        "assistant": "eos_token + '\\n'",
    }
    branches = "".join(
        ("{% if " if i == 0 else "{% elif ")
        + f"message['role'] == '{role}' %}}"
        + "{{ "
        + _literal(headers[role])
        + " + message['content'] + "
        + ends[role]
        + " }}"
        for i, role in enumerate(templates.ROLES)
    )
    return (
        "{{ bos_token }}"
        + _default_system(
            system, _literal(headers["system"]) + " + @SYSTEM@ + '\\n'"
        )
        + "{% for message in messages %}"
        + branches
        + "{% else %}{{ raise_exception('Only system, user and assistant "
        "roles are supported!') }}{% endif %}{% endfor %}"
        + _GENERATION.replace("@PROMPT@", _literal(headers["assistant"]))
    )


_WRITERS = {
    templates.NAME: _tflm,
    "chatml": _chatml,
    "llama3": _llama3,
    "mistral": _mistral,
    "zephyr": _zephyr,
}


def jinja(template: Mapping, tokenizer) -> str:
    """The Jinja source of `template` for `tokenizer`, as transformers
    renders chat templates.

    Args:
        template: the model's template record (`model.template`, as
            `templates.check` returns it).
        tokenizer: the model's tokenizer; it must have every control token
            the template places. Its start and end token texts are not
            written into the source: transformers passes them to the
            template as `bos_token` and `eos_token`.

    Returns:
        The Jinja source (`chat_template.jinja`).

    Raises:
        InputError: no template, a template tflm cannot write, a default
            system prompt in a format without a system role, or a tokenizer
            without the template's control tokens.
    """
    if template is None:
        raise errors.InputError(
            "The model has no chat template to write as chat_template.jinja; "
            "set one when importing (tflm import --chat-template) or export "
            "without it."
        )
    name = template.get("name") if isinstance(template, Mapping) else None
    if name not in _WRITERS:
        raise errors.InputError(
            f"tflm cannot write the chat template {name!r} as Jinja; it "
            f"writes {', '.join(_WRITERS)}. Received: {template!r}."
        )
    record = templates.check(template)
    system = record.get("default_system")
    if system and not templates.FORMATS[name].system:
        raise errors.InputError(
            f"The {name} chat template has no system role, so its default "
            f"system prompt cannot be written; remove default_system from "
            f"the model's template. Received: {errors.shorten(system)}."
        )
    templates.check_tokenizer(record, tokenizer)
    return _WRITERS[name](system)
