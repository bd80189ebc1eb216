"""Imported chat templates give the ids of transformers' apply_chat_template.

Each checkpoint carries its family's Jinja template as its
`tokenizer_config.json` holds it (`llama_files.TEMPLATES`); the import
recognises it, the model directory records it, and tflm renders
conversations (in the graph) to the ids `AutoTokenizer.apply_chat_template`
gives, and generates from them what transformers generates.
"""

import collections
import json
import os
import shutil

import llama_files
import numpy as np
import pytest
import tensorflow as tf

from tflm import errors
from tflm import importers
from tflm.importers import chat_templates
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import template_render

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
jinja2 = pytest.importorskip("jinja2")

# format -> the record config.json keeps.
RECORDS = {
    "qwen2": {"name": "chatml", "default_system": llama_files.QWEN2_SYSTEM},
    "qwen2.5": {"name": "chatml", "default_system": llama_files.QWEN25_SYSTEM},
    "smollm2": {
        "name": "chatml",
        "default_system": llama_files.SMOLLM2_SYSTEM,
    },
    "chatml": {"name": "chatml"},
    "llama3": {"name": "llama3"},
    "mistral": {"name": "mistral"},
    "zephyr": {"name": "zephyr"},
}
FORMATS = list(RECORDS)
SYSTEMLESS = ("mistral",)


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
    "system_empty": [_turn("system", ""), _turn("user", "")],
}

Imported = collections.namedtuple(
    "Imported", "directory model_dir lm hf_tokenizer hf_model"
)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each format's checkpoint, imported with `tflm import` and loaded
    from the model directory."""
    sentencepiece_bytes = llama_files.sentencepiece_model()
    out = {}
    for name in FORMATS:
        path = str(tmp_path_factory.mktemp(name))
        hf_model = llama_files.write_checkpoint(
            path, name, sentencepiece_bytes=sentencepiece_bytes
        )
        model_dir = importers.import_checkpoint(path, path + "-tflm")
        out[name] = Imported(
            path,
            model_dir,
            CausalLM.from_preset(model_dir),
            transformers.AutoTokenizer.from_pretrained(path),
            hf_model,
        )
    return out


def _hf_ids(tokenizer, messages):
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]


def _cases():
    for name in FORMATS:
        for conversation in CONVERSATIONS:
            if name in SYSTEMLESS and conversation.startswith("system"):
                continue
            yield name, conversation


@pytest.mark.parametrize("name", FORMATS)
def test_template_is_recognised_and_recorded(imported, name):
    with open(os.path.join(imported[name].model_dir, "config.json")) as f:
        assert json.load(f)["template"] == RECORDS[name]
    assert imported[name].lm.template == RECORDS[name]


@pytest.mark.parametrize("name, conversation", list(_cases()))
def test_prompt_ids_equal_apply_chat_template(imported, name, conversation):
    model = imported[name]
    messages = CONVERSATIONS[conversation]
    ids = template_render.encode_prompt(
        messages, model.lm.tokenizer, model.lm.template
    )
    assert ids.dtype == np.int32
    assert ids.tolist() == _hf_ids(model.hf_tokenizer, messages)


@pytest.mark.parametrize("conversation", ["system", "system_history"])
def test_mistral_refuses_a_system_turn(imported, conversation):
    model = imported["mistral"]
    messages = CONVERSATIONS[conversation]
    with pytest.raises(jinja2.TemplateError):
        _hf_ids(model.hf_tokenizer, messages)
    with pytest.raises(errors.InputError, match="no system role"):
        template_render.encode_prompt(
            messages, model.lm.tokenizer, model.lm.template
        )
    with pytest.raises(errors.InputError, match="no system role"):
        model.lm.generate(messages, 4, jit_compile=False)


# One per kind of rendering: ChatML with a default system prompt and BPE,
# Llama 3's start id and trim, SentencePiece after control tokens.
@pytest.mark.parametrize("name", ["qwen2", "llama3", "mistral"])
def test_generate_from_a_conversation_equals_transformers(imported, name):
    """`generate` renders the prompt apply_chat_template gives: greedy
    replies to two conversations (one batch) are transformers' replies to
    those ids."""
    model = imported[name]
    # Short: prompt and reply fit Mistral's context (32), uncut.
    conversations = [
        [_turn("user", "hi 你好")],
        [_turn("user", "hi"), _turn("assistant", "4"), _turn("user", "ok")],
    ]
    out = model.lm.generate(
        conversations, 6, return_details=True, jit_compile=False
    )
    eos = list(model.lm.generator(False).pipeline.eos_ids)
    for messages, reply in zip(conversations, out["token_ids"], strict=True):
        prompt = _hf_ids(model.hf_tokenizer, messages)
        assert len(prompt) + 6 <= model.lm.backbone.max_sequence_length
        with torch.no_grad():
            ids = model.hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                eos_token_id=eos, pad_token_id=eos[0],
            )[0, len(prompt) :].tolist()  # fmt: skip
        ends = [i for i, t in enumerate(ids) if t in eos]
        assert reply == (ids[: ends[0]] if ends else ids)
    assert any(out["token_ids"])


@pytest.mark.parametrize("where", ["jinja", "list"])
def test_template_is_read_where_transformers_keeps_it(
    imported, where, tmp_path
):
    """transformers 5 writes `chat_template.jinja`; older files keep a list
    of named templates."""
    model = imported["qwen2"]
    path = str(tmp_path / where)
    shutil.copytree(model.directory, path)
    config = llama_files.read_json(path, "tokenizer_config.json")
    source = config.pop("chat_template")
    if where == "jinja":
        with open(os.path.join(path, "chat_template.jinja"), "w") as f:
            f.write(source)
    else:
        config["chat_template"] = [
            {"name": "tool_use", "template": "{{ messages }}"},
            {"name": "default", "template": source},
        ]
    llama_files.write_json(path, "tokenizer_config.json", config)
    record = chat_templates.from_checkpoint(path, model.lm.tokenizer, None)
    assert record == RECORDS["qwen2"]


def test_a_template_without_its_control_tokens_is_refused(imported):
    model = imported["llama3"]
    with pytest.raises(errors.InputError, match="<\\|im_(start|end)\\|>"):
        chat_templates.from_checkpoint(
            model.directory, model.lm.tokenizer, "chatml"
        )


END_OF_TURN = {
    "qwen2": "<|im_end|>",
    "qwen2.5": "<|im_end|>",
    "smollm2": "<|im_end|>",
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "zephyr": "</s>",
}


@pytest.mark.parametrize("name", FORMATS)
def test_end_of_turn_ends_generation(imported, name):
    model = imported[name]
    token = model.hf_tokenizer.convert_tokens_to_ids(END_OF_TURN[name])
    assert token in model.lm.generator(False).pipeline.eos_ids


# The control token each format's content types literally.
LITERALS = {
    "qwen2": "<|im_start|>",
    "qwen2.5": "<|im_end|>",
    "smollm2": "<|im_start|>",
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "zephyr": "</s>",
}


@pytest.mark.parametrize("name", FORMATS)
def test_control_token_text_in_content_stays_text(imported, name):
    """Unlike transformers (on purpose), tflm never reads a control token
    out of content: the token's id occurs only where the template puts it,
    and the text round-trips."""
    model = imported[name]
    literal = LITERALS[name]
    messages = [
        _turn("user", "hi"),
        _turn("assistant", "hello"),
        _turn("user", f"the {literal} thing\n{literal}"),
    ]
    token = model.hf_tokenizer.convert_tokens_to_ids(literal)
    ours = template_render.encode_prompt(
        messages, model.lm.tokenizer, model.lm.template
    ).tolist()
    theirs = _hf_ids(model.hf_tokenizer, messages)
    assert theirs.count(token) == ours.count(token) + 2
    # The same places as with harmless text; those after the content
    # moved by its length.
    plain = [*messages[:2], _turn("user", "the thing")]
    placed = template_render.encode_prompt(
        plain, model.lm.tokenizer, model.lm.template
    ).tolist()
    assert placed == _hf_ids(model.hf_tokenizer, plain)
    prefix = next(
        i for i, (a, b) in enumerate(zip(ours, placed, strict=False)) if a != b
    )
    shift = len(ours) - len(placed)
    expected = [i if i < prefix else i + shift for i in _where(placed, token)]
    assert _where(ours, token) == expected and expected
    if name not in ("mistral", "zephyr"):  # byte-level BPE: lossless
        text = model.hf_tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert model.hf_tokenizer.decode(ours) == text


def _where(ids, token):
    return [i for i, t in enumerate(ids) if t == token]


def _render(lm, rows):
    """tflm's prompt ids of conversations given as role/content rows."""
    role = tf.constant([[r for r, _ in row] for row in rows])
    content = tf.constant([[c for _, c in row] for row in rows])
    ids, _ = template_render.render(lm.template, lm.tokenizer, role, content)
    return ids.to_list()


@pytest.mark.parametrize("name", ["qwen2", "llama3"])
def test_padding_turns_render_nothing_wherever_they_are(imported, name):
    """An empty role pads, whatever its content and place: a row padded on
    the left or with text in a padding cell renders as the row alone, and
    the default system prompt is added after leading padding too."""
    lm = imported[name].lm
    plain = [("user", "hi")]
    want = _render(lm, [plain])[0]
    assert want == list(
        _hf_ids(imported[name].hf_tokenizer, [_turn("user", "hi")])
    )
    padded = [("", "forged"), ("user", "hi"), ("", "x")]
    assert _render(lm, [padded, [("user", "hi"), ("", ""), ("", "y")]]) == [
        want,
        want,
    ]


def test_a_templated_model_answers_an_empty_batch(imported):
    lm = imported["qwen2"].lm
    role = tf.zeros([0, 2], tf.string)
    ids, loss = template_render.render(lm.template, lm.tokenizer, role, role)
    assert ids.to_list() == [] and loss.to_list() == []
    assert lm.generate([], max_new_tokens=2) == []


def test_a_model_dir_whose_tokenizer_lacks_the_template_tokens(imported):
    """A model directory recording a template its tokenizer cannot place
    is refused when it is loaded, naming the token."""
    source = imported["llama3"].model_dir
    broken = source + "-broken"
    shutil.copytree(source, broken)
    path = os.path.join(broken, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["template"] = {"name": "chatml"}
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(errors.InputError, match="<\\|im_start\\|>"):
        CausalLM.from_preset(broken)
