"""Memory of served requests is bounded by batch x context, not by prompts.

A fresh process loads each export the way TF Serving does (`serving_check`:
XLA disabled, TF1 `Session`, warm-up replayed), then runs amplifying
requests (one long prompt beside many empty ones) and reports how far its
peak resident memory (`VmHWM`, reset before each request) rose above its
resident memory before the request. Freed memory stays with the process and
later requests reuse it, so each export gets its own process, and a request
can only hide behind an earlier one that was itself measured: the first
request over its bound fails the test.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import serving_helpers as helpers

BATCH = 1024  # one long prompt, then empty ones
# Bytes in the long prompt. SentencePiece's own op needs about 200 bytes of
# memory per byte of text (and seconds per MiB), so its prompt is shorter.
LONG = {"byte": 2**20, "sentencepiece": 2**16}
# The bound is FACTOR x 4 bytes x batch x context x (floats a signature
# keeps per context slot), plus RAW_FACTOR bytes per byte of the request
# (feeds, the tokenizer's work). Before the fix the long prompt made a dense
# `[BATCH, LONG]` int32 tensor (4 GiB for the byte model), and `tokenize`
# returned one.
FACTOR = 4
RAW_FACTOR = {"byte": 16, "sentencepiece": 256}

CHILD = helpers.MEASURING_CHILD + textwrap.dedent(
    """
    import numpy as np


    def array(value, dtype):
        if isinstance(value, dict):  # one long prompt, then empty ones
            prompts = [b"x" * value["long"]] + [b""] * value["empty"]
            return np.array(prompts, dtype=object)
        return np.array(value, dtype=dtype)


    def jsonable(v):
        if v.dtype == object:
            return [x.decode("latin-1") for x in v.tolist()]
        return v.tolist()


    def attempt(server, name, arrays):
        try:
            outputs = server.run(name, arrays)["outputs"]
        except Exception as e:  # noqa: BLE001
            return {"error": {"code": type(e).__name__, "message": str(e)}}
        return {
            "shapes": {k: list(v.shape) for k, v in outputs.items()},
            "outputs": {
                k: jsonable(v if v.ndim == 1 else v[:2])
                for k, v in outputs.items()
            },
        }


    def measure(server, request):
        name = request["signature"]
        dtypes = server.dtypes[name]
        arrays = {k: array(v, dtypes[k]) for k, v in request["inputs"].items()}
        result, growth = peak_growth(lambda: attempt(server, name, arrays))
        return {"signature": name, **result, "growth": growth}


    server = serve(sys.argv[2])
    print(json.dumps([measure(server, r) for r in json.loads(sys.argv[3])]))
    """
)
EXPORTS = {
    "sentencepiece": (helpers.sp_export, helpers.sp_model),
    "byte": (helpers.byte_export, helpers.byte_model),
}
SETTINGS = (1, 0.0, 0, 1.0, 0)  # max_new_tokens=1, greedy


def _prompts(kind):
    return {"long": LONG[kind], "empty": BATCH - 1}


def _requests(kind):
    generate = {"prompt": _prompts(kind)}
    for name, value in zip(helpers.SETTINGS, SETTINGS, strict=True):
        generate[name] = [value] * BATCH
    return [
        {"signature": "serving_default", "inputs": generate},
        {"signature": "score", "inputs": {"text": _prompts(kind)}},
        {"signature": "tokenize", "inputs": {"text": _prompts(kind)}},
        {  # one num_tokens for two rows
            "signature": "detokenize",
            "inputs": {"token_ids": [[5, 6], [7, 8]], "num_tokens": [2]},
        },
        {  # more tokens than token_ids has columns
            "signature": "detokenize",
            "inputs": {"token_ids": [[5, 6], [7, 8]], "num_tokens": [3, 1]},
        },
    ]


def slot_floats(backbone) -> dict:
    """Floats each signature keeps per row and context slot, at most."""
    model = (
        backbone.num_heads * backbone.max_sequence_length  # attention
        + backbone.intermediate_dim  # MLP
        + 2 * backbone.num_layers * backbone.hidden_dim  # KV cache
    )
    return {
        "serving_default": model,
        "score": model + backbone.vocabulary_size,  # all logits
        "tokenize": 1,
    }


def bound(kind, signature, backbone) -> int:
    """The most one of `_requests(kind)` may add to resident memory."""
    floats = slot_floats(backbone)[signature]
    slots = BATCH * backbone.max_sequence_length
    return FACTOR * 4 * slots * floats + RAW_FACTOR[kind] * LONG[kind]


@pytest.fixture(scope="module")
def results():
    """Each export's answers, from processes of their own run side by side."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    children = {
        kind: subprocess.Popen(
            [sys.executable, "-c", CHILD, helpers.SERVING_CHECK, export()]
            + [json.dumps(_requests(kind))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for kind, (export, _) in EXPORTS.items()
    }
    answers = {}
    for kind, child in children.items():
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err[-4000:]
        answers[kind] = json.loads(out.strip().splitlines()[-1])
    return answers


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_memory_is_bounded_by_batch_and_context(results, kind):
    backbone = EXPORTS[kind][1]().backbone
    for result in results[kind][:3]:
        assert "error" not in result, result["error"]
        limit = bound(kind, result["signature"], backbone)
        assert result["growth"] < limit, (limit, result["growth"], result)


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_long_prompt_keeps_its_last_tokens(results, kind):
    generated = results[kind][0]
    shapes = generated["shapes"]
    assert shapes["token_ids"][0] == BATCH
    for name in ("text", "num_tokens", "stop_reason"):
        assert shapes[name] == [BATCH]
    lm = EXPORTS[kind][1]()
    expected = helpers.generate(
        lm, [("x" * LONG[kind], *SETTINGS), ("", *SETTINGS)]
    )
    outputs = generated["outputs"]
    assert outputs["num_tokens"][:2] == expected["num_tokens"]
    for row, ids, n in zip(
        outputs["token_ids"],
        expected["token_ids"],
        expected["num_tokens"],
        strict=True,
    ):
        assert row[:n] == ids
    assert len(set(outputs["text"][1:])) == 1  # every empty prompt alike


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_score_and_tokenize_keep_the_first_tokens(results, kind):
    score, tokens = results[kind][1], results[kind][2]
    context = helpers.CONTEXT
    assert score["shapes"] == {"log_likelihood": [BATCH], "num_tokens": [BATCH]}
    assert score["outputs"]["num_tokens"] == [context - 1] + [0] * (BATCH - 1)
    assert tokens["shapes"]["token_ids"] == [BATCH, context]
    assert tokens["outputs"]["num_tokens"] == [context] + [0] * (BATCH - 1)
    tokenizer = EXPORTS[kind][1]().tokenizer
    ids = tokenizer.tokenize("x" * LONG[kind]).numpy().tolist()
    assert tokens["outputs"]["token_ids"][0] == ids[:context]


@pytest.mark.parametrize("index", [3, 4])
def test_detokenize_refuses_inconsistent_num_tokens(results, index):
    error = results["byte"][index].get("error")
    assert error is not None and error["code"] == "InvalidArgumentError"
    assert "num_tokens " in error["message"], error["message"]
