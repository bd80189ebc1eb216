"""A model with a template, served as trained: in-process `generate` and
`stream` render prompts and conversations into the template, and the
export's `serving_default` and `chat` answer the same under TF Serving's
conditions; a model without a template is unchanged."""

import pytest
import serving_helpers as helpers
import tensorflow as tf

from tflm import errors
from tflm.tokenizers import template_render
from tflm.tokenizers import templates

CHATS = [
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "héllo"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "and?"},
    ],
]
CONTROLS = {"max_new_tokens": 8, "temperature": 0.0}


def _templated_ids(messages):
    ids = template_render.encode_prompt(
        messages, helpers.chat_model().tokenizer
    )
    return ids.tolist()


def _by_ids(messages, **controls):
    return helpers.chat_model().generate(
        _templated_ids(messages), jit_compile=False, **controls
    )


def _text(ids) -> str:
    raw = helpers.chat_model().tokenizer.detokenize(tf.constant(ids, tf.int32))
    return raw.numpy().decode("utf-8", "replace")


def test_generate_and_stream_apply_the_template():
    lm = helpers.chat_model()
    assert lm.template == templates.TEMPLATE
    for messages in CHATS:
        want = _text(_by_ids(messages, **CONTROLS))
        if len(messages) == 1:
            text = lm.generate(
                messages[0]["content"], jit_compile=False, **CONTROLS
            )
            assert text == want
        assert lm.generate(messages, jit_compile=False, **CONTROLS) == want
        assert "".join(lm.stream(messages, **CONTROLS)) == want
    both = lm.generate(CHATS, jit_compile=False, **CONTROLS)
    assert both == [_text(_by_ids(m, **CONTROLS)) for m in CHATS]


def test_a_model_without_template_is_unchanged():
    lm = helpers.byte_model()
    assert lm.template is None
    raw = lm.tokenizer.tokenize("Hello").numpy().tolist()
    by_ids = lm.generate([raw], jit_compile=False, **CONTROLS)[0]
    assert lm.generate("Hello", jit_compile=False, **CONTROLS) == _text(by_ids)
    with pytest.raises(errors.InputError, match="chat template"):
        lm.generate(CHATS[0])


def test_bad_conversations_are_input_errors():
    lm = helpers.chat_model()
    with pytest.raises(errors.InputError, match="role"):
        lm.generate([{"role": "robot", "content": "x"}])
    with pytest.raises(errors.InputError, match="assistant"):
        lm.generate([{"role": "assistant", "content": "x"}])


def _chat_body(chats, **controls):
    width = max(len(c) for c in chats)
    pad = [{"role": "", "content": ""}]
    rows = [c + pad * (width - len(c)) for c in chats]
    n = len(chats)
    inputs = {
        "role": [[t["role"] for t in r] for r in rows],
        "content": [[t["content"] for t in r] for r in rows],
        "max_new_tokens": [controls.get("max_new_tokens", 8)] * n,
        "temperature": [controls.get("temperature", 0.0)] * n,
        "top_k": [controls.get("top_k", 0)] * n,
        "top_p": [controls.get("top_p", 1.0)] * n,
        "seed": [controls.get("seed", 0)] * n,
    }
    return {"signature_name": "chat", "inputs": inputs}


@pytest.fixture(scope="module")
def served():
    sampled = {"max_new_tokens": 10, "temperature": 1.5, "seed": 4}
    rows = [("Hello", 8, 0.0, 0, 1.0, 0), ("the cat", 10, 1.5, 0, 1.0, 4)]
    requests = [
        helpers.columnar(rows),
        _chat_body(CHATS),
        _chat_body(CHATS, **sampled),
        _chat_body([[{"role": "robot", "content": "x"}]]),
        _chat_body([[{"role": "assistant", "content": "x"}]]),
    ]
    report = helpers.serving_check(helpers.chat_export(), requests, warmup=True)
    return report, rows, sampled


def test_served_as_in_process(served):
    report, rows, sampled = served
    assert report["xla_disabled"] and report["unknown_ops"] == []
    assert [w for w in report["warmup"] if "error" in w] == []
    assert "chat" in report["signatures"]
    results = report["results"]
    local = helpers.generate(helpers.chat_model(), rows)
    texts = [
        helpers.as_bytes(t).decode("utf-8", "replace")
        for t in results[0]["outputs"]["text"]
    ]
    assert texts == local["outputs"]
    for result, controls in zip(results[1:3], (CONTROLS, sampled), strict=True):
        outputs = result["outputs"]
        assert set(outputs) == {"text", "num_tokens", "stop_reason"}
        for i, messages in enumerate(CHATS):
            alone = helpers.chat_model().generate(
                messages, jit_compile=False, return_details=True, **controls
            )
            assert (
                helpers.as_bytes(outputs["text"][i]).decode("utf-8", "replace")
                == (alone["outputs"])
            )
            assert outputs["num_tokens"][i] == alone["num_tokens"][0]
            assert outputs["stop_reason"][i] == alone["stop_reason"][0]


def test_chat_bad_role_is_invalid_argument(served):
    report, _, _ = served
    for result in report["results"][3:]:
        error = result.get("error")
        assert error and "role" in error["message"], result
        assert error["code"] == "InvalidArgumentError"


def test_old_serving_default_contract_kept():
    report = helpers.serving_check(helpers.chat_export(), [])
    want_in, want_out = helpers.CONTRACT["serving_default"]
    for name, signature in (("chat", "chat"), ("plain", "serving_default")):
        del name
        got = report["signatures"][signature]
        if signature == "serving_default":
            inputs = {
                k: (v["dtype"], v["shape"]) for k, v in got["inputs"].items()
            }
            outputs = {
                k: (v["dtype"], v["shape"]) for k, v in got["outputs"].items()
            }
            assert inputs == want_in and outputs == want_out
    plain = helpers.serving_check(helpers.byte_export(), [])
    assert "chat" not in plain["signatures"]
