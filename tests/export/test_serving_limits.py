"""Hostile requests are refused in the graph, under TF Serving's conditions.

A fresh process loads the templated export the way TF Serving does (TF1
`Session`, XLA disabled, warm-up replayed) and runs the requests of issue 26
that grew past 6 GB or ran for minutes: each must fail at once with
`InvalidArgument` naming the input and its cap, with its peak resident
memory (`VmHWM`, reset before each request) barely above where it started.
Requests at the caps are answered, so the caps are not tighter than they
say. One process runs them all, in order.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import serving_helpers as helpers

from tflm.generation import spec

INT32_MAX = 2**31 - 1
CONTEXT = helpers.CONTEXT
MiB = 2**20
# A refused request may hold its inputs' tensors (10,000 x 1 KiB prompts)
# and nothing more (measured: under 1 MiB); before the caps these requests
# grew past 6 GB.
REFUSED_GROWTH = 16 * MiB
# The decode-cell cap counts the request's own tokens, so a request past it
# is refused once tokenized: it may hold its 1 MiB prompt's ids (measured:
# 30 MiB), still nothing that grows with rows x context.
TOKENIZED_GROWTH = 64 * MiB
REFUSED_SECONDS = 5  # measured: milliseconds; before the caps, minutes
# 2048 rows of the tiny model. The 1 MiB prompt beside 2,047 empty ones,
# rendered through the template, used to make a dense [rows x template
# cells, 1 MiB] mask (12 GB) even within the caps.
ANSWERED_GROWTH = 256 * MiB

CHILD = helpers.MEASURING_CHILD + textwrap.dedent(
    """
    def attempt(server, name, arrays):
        try:
            outputs = server.run(name, arrays)["outputs"]
        except Exception as e:  # noqa: BLE001
            return {"error": check._error(e)}
        return {"rows": len(outputs["num_tokens"])}


    def measure(server, body):
        name = body["signature_name"]
        _, arrays = check.rest_to_arrays(body, server.dtypes[name])
        start = time.perf_counter()
        result, growth = peak_growth(lambda: attempt(server, name, arrays))
        seconds = time.perf_counter() - start
        return {"signature": name, **result, "seconds": seconds,
                "growth": growth}


    server = serve(sys.argv[2])
    with open(sys.argv[3]) as f:
        bodies = json.load(f)
    print(json.dumps([measure(server, body) for body in bodies]))
    """
)


def _generate(prompts, **settings):
    return helpers.full_request(
        [{"prompt": p, "max_new_tokens": 2, **settings} for p in prompts]
    )


def _beams(prompts, **settings):
    return helpers.beam_request(
        [{"prompt": p, "max_new_tokens": 2, **settings} for p in prompts]
    )


def _serving_default(prompts):
    return helpers.columnar([(p, 2, 0.0, 0, 1.0, 0) for p in prompts])


def _chat(role, content):
    inputs = {"role": role, "content": content}
    for name, value in zip(helpers.SETTINGS, (2, 0.0, 0, 1.0, 0), strict=True):
        inputs[name] = [value] * len(role)
    return {"signature_name": "chat", "inputs": inputs}


def _texts(signature, texts):
    return {"signature_name": signature, "inputs": {"text": texts}}


ROWS = f"at most {spec.MAX_DECODE_ROWS} "
CELLS = f"at most {spec.MAX_DECODE_CELLS} "
EITHER = (ROWS, CELLS)  # past both caps: either assert may fail first
AT_THE_CAP = spec.MAX_DECODE_CELLS // CONTEXT  # rows (2048) of 64 cells
# Rows beside a prompt that fills the context, each `CONTEXT - 1` prompt
# tokens and 2 new ones wide.
BESIDE_A_FULL_PROMPT = spec.MAX_DECODE_CELLS // (CONTEXT + 1)  # 2016
# name -> (REST body, what the message must name, the caps it may give).
REFUSED = {
    "samples 2**31-1": (
        _generate(["a"], num_return_sequences=INT32_MAX),
        "num_return_sequences",
        EITHER,
    ),
    "samples 10**6": (
        _generate(["a"], num_return_sequences=10**6),
        "num_return_sequences",
        EITHER,
    ),
    "samples 1000 x 64 prompts": (
        _generate(["a"] * 64, num_return_sequences=1000),
        "num_return_sequences",
        EITHER,
    ),
    "beams 2**31-1": (_beams(["a"], num_beams=INT32_MAX), "num_beams", EITHER),
    "beams 10**6": (_beams(["a"], num_beams=10**6), "num_beams", EITHER),
    "beams 1000 x 8 prompts": (
        _beams(["a"] * 8, num_beams=1000),
        "num_beams",
        EITHER,
    ),
    "beams -1": (_beams(["a"], num_beams=-1), "num_beams", (">= 1",)),
    "10,000 prompts of 1 KiB": (
        _generate(["x" * 1024] * 10_000),
        "prompt rows",
        EITHER,
    ),
    "1 MiB prompt beside 2,048 empty ones": (
        _serving_default(["x" * MiB] + [""] * AT_THE_CAP),
        "prompt rows",
        (CELLS,),
    ),
    "no_repeat_ngram_size 2**31-1": (
        _generate(["a"], no_repeat_ngram_size=INT32_MAX),
        "no_repeat_ngram_size",
        (f"at most the context ({CONTEXT})",),
    ),
    "score 1 MiB beside 2,048 empty texts": (
        _texts("score", ["x" * MiB] + [""] * AT_THE_CAP),
        "text rows",
        (CELLS,),
    ),
    "tokenize 10,000 texts of 1 KiB": (
        _texts("tokenize", ["x" * 1024] * 10_000),
        "text rows",
        EITHER,
    ),
    "chat roles all empty": (
        _chat([["user", ""], ["", ""]], [["hi", ""], ["ignored", ""]]),
        "role",
        ("needs a turn",),
    ),
}
# name -> (REST body, rows answered): requests at the caps.
ANSWERED = {
    "256 prompts x 8 samples": (
        _generate([""] * (AT_THE_CAP // 8), num_return_sequences=8),
        AT_THE_CAP,
    ),
    "8 prompts x 8 beams": (
        _beams(["a"] * 8, num_beams=8, num_return_sequences=2),
        16,
    ),
    "1 MiB prompt beside 2,015 empty ones": (
        _serving_default(["x" * MiB] + [""] * (BESIDE_A_FULL_PROMPT - 1)),
        BESIDE_A_FULL_PROMPT,
    ),
    "score 1 MiB beside 2,047 empty texts": (
        _texts("score", ["x" * MiB] + [""] * (AT_THE_CAP - 1)),
        AT_THE_CAP,
    ),
    "no_repeat_ngram_size = context": (
        _generate(["a", "b"], no_repeat_ngram_size=CONTEXT),
        2,
    ),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every request's answer, from one process that serves the export."""
    bodies = [body for body, *_ in (*REFUSED.values(), *ANSWERED.values())]
    request_file = tmp_path_factory.mktemp("limits") / "requests.json"
    request_file.write_text(json.dumps(bodies))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, helpers.SERVING_CHECK]
        + [helpers.chat_export(), str(request_file)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(zip([*REFUSED, *ANSWERED], answers, strict=True))


@pytest.mark.parametrize("case", list(REFUSED))
def test_hostile_requests_are_refused_at_once(results, case):
    result = results[case]
    _, name, caps = REFUSED[case]
    error = result.get("error")
    assert error is not None, result
    assert error["code"] == "InvalidArgumentError", error
    assert name in error["message"], error
    assert any(cap in error["message"] for cap in caps), error
    limit = TOKENIZED_GROWTH if "1 MiB" in case else REFUSED_GROWTH
    assert result["growth"] < limit, result
    assert result["seconds"] < REFUSED_SECONDS, result


@pytest.mark.parametrize("case", list(ANSWERED))
def test_requests_within_the_caps_are_answered(results, case):
    result = results[case]
    assert "error" not in result, result["error"]
    assert result["rows"] == ANSWERED[case][1]
    assert result["growth"] < ANSWERED_GROWTH, result
