"""Imported Llama-family checkpoints, exported and served as in-process.

Two tiny Hugging Face checkpoints (`family_checkpoints`): a Qwen2 one with
a byte-level BPE tokenizer and the ChatML template, and a Llama one with a
SentencePiece tokenizer and the Mistral `[INST]` template. Each is imported,
loaded from its model directory and exported once; the export is run as
TF Serving runs it (`serving_check.py`: a fresh process, a TF1 session,
XLA disabled), and every generating signature must give the token ids and
text of `CausalLM.generate` in-process, greedy and sampled. The ChatML
head is set so that `<|im_end|>` ends one reply after three tokens: served
generation stops there (`eos`), without it in the reply.
"""

import functools
import os
from typing import NamedTuple

import family_checkpoints
import numpy as np
import pytest
import serving_helpers as helpers
import torch
import transformers

from tflm import export as export_lib
from tflm import importers
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import template_render

STOP_TURN = [{"role": "user", "content": "hello there"}]
STOP_AFTER = 3  # `<|im_end|>` is the greedy 4th reply token of STOP_TURN.
# serving_default rows: (prompt, max_new_tokens, temperature, top_k, top_p,
# seed). The first is STOP_TURN's; greedy rows come first.
ROWS = [
    ("hello there", 12, 0.0, 0, 1.0, 0),
    ("what is the sky", 10, 0.0, 0, 1.0, 0),
    ("héllo wörld 🙂", 12, 1.0, 0, 1.0, 3),
    ("tell me a word", 12, 0.8, 20, 0.9, 7),
]
GREEDY = 2
SAMPLED = {"max_new_tokens": 10, "temperature": 1.2, "seed": 4}
NEW = {"max_new_tokens": 8}
GENERATE = [
    dict(prompt="the cat", repetition_penalty=1.3, **NEW),
    dict(prompt="hello there", no_repeat_ngram_size=2, top_k=30, **NEW),
]
GENERATE_SAMPLED = [
    dict(prompt=p, temperature=0.9, seed=s, num_return_sequences=2, **NEW)
    for p, s in (("the cat", 5), ("say a word", 9))
]
BEAMS = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6)
USER_ASSISTANT = [
    {"role": "user", "content": "what is the sky"},
    {"role": "assistant", "content": "blue"},
    {"role": "user", "content": "and grass?"},
]
WITH_SYSTEM = [{"role": "system", "content": "Answer briefly."}]
WITH_SYSTEM += USER_ASSISTANT


class Case(NamedTuple):
    """One imported family: its checkpoint, model, export and the served
    results of `_requests` (in that order)."""

    name: str
    checkpoint: str
    model: CausalLM
    export: str
    chats: list
    report: dict


def _chat_body(chats, **controls):
    width = max(len(c) for c in chats)
    pad = [{"role": "", "content": ""}]
    rows = [c + pad * (width - len(c)) for c in chats]
    n = len(chats)
    inputs = {
        "role": [[t["role"] for t in r] for r in rows],
        "content": [[t["content"] for t in r] for r in rows],
        "max_new_tokens": [controls.get("max_new_tokens", 12)] * n,
        "temperature": [controls.get("temperature", 0.0)] * n,
        "top_k": [controls.get("top_k", 0)] * n,
        "top_p": [controls.get("top_p", 1.0)] * n,
        "seed": [controls.get("seed", 0)] * n,
    }
    return {"signature_name": "chat", "inputs": inputs}


def _requests(chats):
    beams = [{"prompt": p, **BEAMS} for p in ("hello there", "the cat")]
    return [
        helpers.columnar(ROWS),
        helpers.full_request(GENERATE),
        helpers.full_request(GENERATE_SAMPLED),
        helpers.beam_request(beams),
        _chat_body(chats),
        _chat_body(chats, **SAMPLED),
        _chat_body([WITH_SYSTEM]),
    ]


@functools.cache
def _case(name: str) -> Case:
    root = os.path.join(helpers.workdir(), f"family-{name}")
    if name == "chatml":
        checkpoint = family_checkpoints.write_chatml(
            os.path.join(root, "hf"), stop=(STOP_TURN, STOP_AFTER)
        )
        chats = [STOP_TURN, WITH_SYSTEM]
    else:
        checkpoint = family_checkpoints.write_llama(os.path.join(root, "hf"))
        chats = [STOP_TURN, USER_ASSISTANT]
    directory = importers.import_checkpoint(
        checkpoint, os.path.join(root, "model")
    )
    model = CausalLM.from_preset(directory)
    path = export_lib.export(model, os.path.join(root, "export"))
    report = helpers.serving_check(path, _requests(chats), warmup=True)
    return Case(name, checkpoint, model, path, chats, report)


@pytest.fixture(scope="module", params=["chatml", "llama"])
def case(request):
    return _case(request.param)


def _local(lm, prompts, **settings):
    return lm.generate(
        prompts, jit_compile=False, return_details=True, **settings
    )


def _texts(outputs):
    return [
        helpers.as_bytes(t).decode("utf-8", "replace") for t in outputs["text"]
    ]


def _served_ids(outputs):
    return [
        ids[:n]
        for ids, n in zip(
            outputs["token_ids"], outputs["num_tokens"], strict=True
        )
    ]


def _assert_same(served: dict, local: dict):
    """A served result's outputs equal `CausalLM.generate`'s details."""
    assert "error" not in served, served
    outputs = served["outputs"]
    assert _texts(outputs) == local["outputs"]
    assert _served_ids(outputs) == local["token_ids"]
    assert outputs["num_tokens"] == local["num_tokens"]
    assert outputs["stop_reason"] == local["stop_reason"]


def _columns(rows: list[dict]) -> dict:
    """`generate` keyword arguments of `full_request` rows."""
    names = {k for r in rows for k in r} - {"prompt"}
    defaults = helpers.FULL_DEFAULTS
    return {k: [r.get(k, defaults[k]) for r in rows] for k in sorted(names)}


def test_imported_family_is_served_under_serving_conditions(case):
    report = case.report
    assert report["xla_disabled"]
    assert report["unknown_ops"] == []  # core TF and TF Text ops only
    assert report["graph"]["must_compile"] == []
    assert {"serving_default", "generate", "beam_search", "chat"} <= set(
        report["signatures"]
    )
    assert len(report["warmup"]) > 0
    assert [w for w in report["warmup"] if "error" in w] == []
    assert case.model.template["name"] == case.name.replace("llama", "mistral")


def test_serving_default_is_generate_in_process(case):
    served = case.report["results"][0]
    local = helpers.generate(case.model, ROWS)
    _assert_same(served, local)
    # Greedy and seeded sampling both made text; not one repeated id.
    assert all(n > 0 for n in local["num_tokens"])
    assert len({tuple(ids) for ids in local["token_ids"]}) == len(ROWS)


def test_serving_default_renders_the_template(case):
    """A prompt is one user turn in the family's template: the ids that
    transformers' `apply_chat_template` gives, continued."""
    served = case.report["results"][0]["outputs"]
    lm = case.model
    for i, (prompt, new, *_) in enumerate(ROWS[:GREEDY]):
        turn = [{"role": "user", "content": prompt}]
        want = family_checkpoints.chat_ids(case.checkpoint, turn)
        rendered = template_render.encode_prompt(
            turn, lm.tokenizer, lm.template
        )
        assert rendered.tolist() == want
        by_ids = lm.generate([want], new, jit_compile=False)[0]
        assert _served_ids(served)[i] == by_ids
        # The raw prompt, without the template, continues otherwise.
        raw = lm.tokenizer.tokenize(prompt).numpy().tolist()
        if lm.tokenizer.add_bos:
            raw = [lm.tokenizer.bos_id, *raw]
        assert lm.generate([raw], new, jit_compile=False)[0] != by_ids


def test_generate_signature_is_generate_in_process(case):
    lm = case.model
    for served, rows in zip(
        case.report["results"][1:3], (GENERATE, GENERATE_SAMPLED), strict=True
    ):
        local = _local(lm, [r["prompt"] for r in rows], **_columns(rows))
        _assert_same(served, local)
        assert served["outputs"]["prompt_index"] == local["prompt_index"]
    sampled = _texts(case.report["results"][2]["outputs"])
    assert sampled[0] != sampled[1]  # copy j samples with seed + j


def test_beam_search_signature_is_generate_in_process(case):
    served = case.report["results"][3]
    local = _local(case.model, ["hello there", "the cat"], **BEAMS)
    _assert_same(served, local)
    outputs = served["outputs"]
    assert outputs["prompt_index"] == [0, 0, 1, 1]
    np.testing.assert_allclose(outputs["score"], local["score"], atol=1e-4)
    assert outputs["score"][0] >= outputs["score"][1]


def test_chat_signature_is_generate_in_process(case):
    results = case.report["results"]
    for served, controls in zip(
        results[4:6], ({"max_new_tokens": 12}, SAMPLED), strict=True
    ):
        assert "error" not in served, served
        outputs = served["outputs"]
        assert set(outputs) == {"text", "num_tokens", "stop_reason"}
        local = _local(case.model, case.chats, **controls)
        assert _texts(outputs) == local["outputs"]
        assert outputs["num_tokens"] == local["num_tokens"]
        assert outputs["stop_reason"] == local["stop_reason"]
    # The conversation's reply continues transformers' rendering of it.
    lm, conversation = case.model, case.chats[1]
    ids = family_checkpoints.chat_ids(case.checkpoint, conversation)
    by_ids = lm.generate([ids], 12, jit_compile=False)[0]
    text = lm.tokenizer.detokenize(np.array(by_ids, np.int32)).numpy()
    assert _texts(results[4]["outputs"])[1] == text.decode("utf-8", "replace")


def test_system_turn_is_the_templates_to_accept(case):
    served = case.report["results"][6]
    if case.name == "chatml":
        local = _local(case.model, [WITH_SYSTEM], max_new_tokens=12)
        assert _texts(served["outputs"]) == local["outputs"]
        # An explicit system turn replaces the default one.
        alone = _local(case.model, [USER_ASSISTANT], max_new_tokens=12)
        assert alone["token_ids"] != local["token_ids"]
    else:  # Mistral's [INST] format has no system role.
        error = served.get("error")
        assert error and error["code"] == "InvalidArgumentError", served
        assert "no system role" in error["message"]


def _transformers_greedy(checkpoint, turn, new):
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = family_checkpoints.hf_tokenizer(checkpoint)
    end = tokenizer.convert_tokens_to_ids(family_checkpoints.IM_END)
    ids = torch.tensor([family_checkpoints.chat_ids(checkpoint, turn)])
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=new, do_sample=False, eos_token_id=end
        )
    return out[0, ids.shape[1] :].tolist(), end, tokenizer


def test_im_end_stops_served_generation():
    case = _case("chatml")
    reply, end, tokenizer = _transformers_greedy(
        case.checkpoint, STOP_TURN, ROWS[0][1]
    )
    assert reply[-1] == end and len(reply) == STOP_AFTER + 1
    # `<|im_end|>` is the template's end token, not the tokenizer's end id.
    assert case.model.tokenizer.eos_id != end
    assert case.model.tokenizer.special_tokens[family_checkpoints.IM_END] == end
    results = case.report["results"]
    default, chat = results[0]["outputs"], results[4]["outputs"]
    for outputs in (default, chat):
        assert outputs["stop_reason"][0] == "eos"
        assert outputs["num_tokens"][0] == STOP_AFTER
        text = _texts(outputs)[0]
        assert text == tokenizer.decode(reply[:-1])
        assert family_checkpoints.IM_END not in text
    assert _served_ids(default)[0] == reply[:-1]
    assert end not in default["token_ids"][0]
    # Other prompts run on past three tokens: the stop is `<|im_end|>`'s.
    assert default["num_tokens"][1] > STOP_AFTER
