"""The Jinja a model's chat template is written as renders tflm's ids.

Each family's tokenizer is written as its checkpoint ships it (the
helpers in `tests/`), with the family's own Jinja; the importer
reads the template record from it, `hf_chat_template.jinja` writes the
record back as Jinja, and transformers' `apply_chat_template` with that
Jinja gives the ids tflm renders. tflm's own template is written for a
GPT-2 tokenizer (`vocab.json` + `merges.txt`).
"""

import os
import shutil

import pytest

from tflm import errors
from tflm.export import hf_chat_template
from tflm.importers import chat_templates
from tflm.importers import hf_tokenizer
from tflm.tokenizers import template_render
from tflm.tokenizers import templates

transformers = pytest.importorskip(
    "transformers", reason="transformers renders the Jinja under test"
)
jinja2 = pytest.importorskip("jinja2", reason="chat templates are Jinja")
pytest.importorskip("torch", reason="the checkpoint helpers import torch")
pytest.importorskip("sentencepiece", reason="Mistral's tokenizer.model")

import gpt2_files  # noqa: E402
import llama_files  # noqa: E402

# checkpoint -> (tokenizer kind, tokenizer style, the family's template).
CHECKPOINTS = {
    "qwen2": ("bpe", "qwen2", "qwen2"),  # ChatML, a default system prompt
    "chatml": ("bpe", "qwen2", "chatml"),
    "llama3": ("bpe", "llama3", "llama3"),
    "mistral": ("sentencepiece", "mistral", "mistral"),
    "zephyr": ("sentencepiece", "zephyr", "zephyr"),
    "tflm": ("gpt2", None, None),
}
RECORDS = {
    "qwen2": {"name": "chatml", "default_system": llama_files.QWEN2_SYSTEM},
    "chatml": {"name": "chatml"},
    "llama3": {"name": "llama3"},
    "mistral": {"name": "mistral"},
    "zephyr": {"name": "zephyr"},
    "tflm": templates.TEMPLATE,
}
FAMILIES = [name for name in CHECKPOINTS if name != "tflm"]


def _turn(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "user": [_turn("user", "Hello there 你好 🙂\nsecond line")],
    "system": [
        _turn("system", "Answer briefly.\n"),
        _turn("user", "What is 2 + 2?"),
    ],
    "history": [
        _turn("user", "hi"),
        _turn("assistant", "Hello! 👍🏽\n\nHow can I help?"),
        _turn("user", "  And 红楼梦 3 + 3? 🚀 \n"),
    ],
    "system_history": [
        _turn("system", "You are terse."),
        _turn("user", "What is 2 + 2?"),
        _turn("assistant", " 4 "),
        _turn("user", "the quick brown fox\n\n中文"),
    ],
    "whitespace": [
        _turn("user", "  two spaces"),
        _turn("assistant", "  lead\t"),
        _turn("user", "\nnewline first"),
    ],
}


class Checkpoint:
    """A tokenizer directory, loaded in tflm and in transformers."""

    def __init__(self, path, kind, style, family, spm):
        if kind == "gpt2":
            gpt2_files.write_tokenizer(path)
        elif kind == "bpe":
            llama_files.write_bpe(path, style, family)
        else:
            llama_files.write_sentencepiece(path, spm, style, family)
        self.path = path
        self.tokenizer = hf_tokenizer.load(path)
        if kind == "gpt2":
            self.hf = transformers.GPT2Tokenizer.from_pretrained(path)
        else:
            self.hf = transformers.AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    spm = llama_files.sentencepiece_model()
    return {
        name: Checkpoint(str(tmp_path_factory.mktemp(name)), *spec, spm)
        for name, spec in CHECKPOINTS.items()
    }


def _hf_ids(checkpoint, messages, source):
    return checkpoint.hf.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        chat_template=source,
    )["input_ids"]


def _cases():
    for name in CHECKPOINTS:
        for conversation in CONVERSATIONS:
            if name == "mistral" and conversation.startswith("system"):
                continue
            yield name, conversation


@pytest.mark.parametrize("name", FAMILIES)
def test_imported_template_written_back_is_recognised(
    checkpoints, name, tmp_path
):
    """Family Jinja -> record (import) -> Jinja -> the same record."""
    checkpoint = checkpoints[name]
    record = chat_templates.from_checkpoint(
        checkpoint.path, checkpoint.tokenizer, None
    )
    assert record == RECORDS[name]
    path = str(tmp_path / "written")
    shutil.copytree(checkpoint.path, path)
    source = hf_chat_template.jinja(record, checkpoint.tokenizer)
    with open(os.path.join(path, chat_templates.JINJA_FILE), "w") as f:
        f.write(source)
    assert chat_templates.read(path) == source
    again = chat_templates.from_checkpoint(path, checkpoint.tokenizer, None)
    assert again == RECORDS[name]


@pytest.mark.parametrize("name, conversation", list(_cases()))
def test_apply_chat_template_gives_tflm_prompt_ids(
    checkpoints, name, conversation
):
    checkpoint = checkpoints[name]
    record = RECORDS[name]
    messages = CONVERSATIONS[conversation]
    source = hf_chat_template.jinja(record, checkpoint.tokenizer)
    ours = template_render.encode_prompt(messages, checkpoint.tokenizer, record)
    assert ours.tolist() == _hf_ids(checkpoint, messages, source)


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_tflm_template_renders_render_text(checkpoints, conversation):
    checkpoint = checkpoints["tflm"]
    hf = checkpoint.hf
    assert hf.bos_token == hf.eos_token == "<|endoftext|>"
    messages = CONVERSATIONS[conversation]
    source = hf_chat_template.jinja(templates.TEMPLATE, checkpoint.tokenizer)
    text = hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False,
        chat_template=source,
    )  # fmt: skip
    expected = templates.render_text(
        templates.TEMPLATE, messages, hf.bos_token, hf.eos_token
    )
    assert text == expected
    assert text.startswith("<|endoftext|>### ")
    assert text.count("<|endoftext|>") == 1 + sum(
        m["role"] == "assistant" for m in messages
    )


def test_default_system_prompt_is_written_escaped(checkpoints):
    """A default system prompt with quotes, backslashes, braces and
    non-ASCII text is added before a conversation without one, as tflm
    adds it."""
    checkpoint = checkpoints["qwen2"]
    system = "Say \"hi\" and 'bye' \\ {{ x }} {% y %} 你好 🙂\n"
    record = {"name": "chatml", "default_system": system}
    source = hf_chat_template.jinja(record, checkpoint.tokenizer)
    messages = CONVERSATIONS["user"]
    text = checkpoint.hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False,
        chat_template=source,
    )  # fmt: skip
    assert text == templates.render_text(record, messages)
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n")
    ours = template_render.encode_prompt(messages, checkpoint.tokenizer, record)
    assert ours.tolist() == _hf_ids(checkpoint, messages, source)


def test_tflm_reply_boundary_can_differ_from_one_string(tmp_path):
    """tflm's own format tokenizes an earlier reply as a piece of its own
    (as in training); transformers tokenizes the text between control
    tokens as one string. With a merge across the boundary (here `"\\n "`,
    learned from indented lines), a reply that starts with two spaces
    gives the same text but other ids, at that boundary only."""
    vocab, merges = gpt2_files.train_bpe(
        gpt2_files.TEXTS + ["if x:\n  return 1\n  return 2\n"] * 3
    )
    assert "Ċ Ġ" in merges
    gpt2_files.write_tokenizer(str(tmp_path), vocab, merges)
    tokenizer = hf_tokenizer.load(str(tmp_path))
    hf = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    source = hf_chat_template.jinja(templates.TEMPLATE, tokenizer)
    messages = CONVERSATIONS["whitespace"]
    ours = template_render.encode_prompt(messages, tokenizer).tolist()
    theirs = hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True,
        return_dict=True, chat_template=source,
    )["input_ids"]  # fmt: skip
    assert hf.decode(ours) == hf.decode(theirs)
    first = next(
        i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b
    )
    header = hf.decode(ours[:first])
    assert header.endswith("### Assistant:")
    assert hf.convert_ids_to_tokens(ours[first : first + 2]) == ["Ċ", "Ġ"]
    assert hf.convert_ids_to_tokens(theirs[first]) == "ĊĠ"
    assert ours[first + 2 :] == theirs[first + 1 :]
    # One user turn has no earlier reply: the same ids.
    single = CONVERSATIONS["user"]
    assert template_render.encode_prompt(single, tokenizer).tolist() == (
        hf.apply_chat_template(
            single, add_generation_prompt=True, tokenize=True,
            return_dict=True, chat_template=source,
        )["input_ids"]
    )  # fmt: skip


@pytest.mark.parametrize(
    "messages, match",
    [
        # As in the original, a system turn first breaks the alternation.
        (CONVERSATIONS["system"], "Conversation roles must alternate"),
        (
            [_turn("user", "a"), _turn("system", "b")],
            "Only user and assistant roles",
        ),
        (
            [_turn("user", "a"), _turn("user", "b")],
            "Conversation roles must alternate",
        ),
    ],
)
def test_mistral_refuses_as_the_original(checkpoints, messages, match):
    checkpoint = checkpoints["mistral"]
    source = hf_chat_template.jinja(RECORDS["mistral"], checkpoint.tokenizer)
    with pytest.raises(jinja2.TemplateError, match=match):
        _hf_ids(checkpoint, messages, source)


@pytest.mark.parametrize("name", ["qwen2", "llama3", "zephyr", "tflm"])
def test_a_role_tflm_does_not_render_is_refused(checkpoints, name):
    checkpoint = checkpoints[name]
    source = hf_chat_template.jinja(RECORDS[name], checkpoint.tokenizer)
    messages = [_turn("user", "hi"), _turn("tool", "{}")]
    with pytest.raises(jinja2.TemplateError, match="Only system, user"):
        _hf_ids(checkpoint, messages, source)
    with pytest.raises(errors.InputError, match="role"):
        template_render.encode_prompt(
            messages, checkpoint.tokenizer, RECORDS[name]
        )


@pytest.mark.parametrize(
    "name, template, match",
    [
        ("tflm", None, "has no chat template"),
        ("tflm", {"name": "llama2"}, "cannot write the chat template 'llama2'"),
        ("tflm", "chatml", "cannot write the chat template None"),
        (
            "mistral",
            {"name": "mistral", "default_system": "Be brief."},
            "mistral chat template has no system role",
        ),
        ("tflm", {"name": "chatml"}, "control token '<\\|im_start\\|>'"),
        (
            "tflm",
            {**templates.TEMPLATE, "turn_end": "\n\n"},
            "other headers or ids",
        ),
    ],
)
def test_a_template_tflm_cannot_write_is_an_input_error(
    checkpoints, name, template, match
):
    with pytest.raises(errors.InputError, match=match):
        hf_chat_template.jinja(template, checkpoints[name].tokenizer)
