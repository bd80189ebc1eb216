"""The `beam_search` signature under TF Serving's conditions: the same beams
and scores as `CausalLM.generate(num_beams=...)`, and bad input fails with
an `InvalidArgument` that names the input."""

import numpy as np
import pytest
import serving_helpers as helpers

ROWS = [
    {"prompt": "To be, or not", "max_new_tokens": 8, "num_return_sequences": 3},
    {"prompt": "héllo", "max_new_tokens": 8, "num_return_sequences": 3},
]
ONE = [
    {"prompt": "the cat", "max_length": 14, "length_penalty": 0.6},
    {"prompt": "", "max_new_tokens": 6, "early_stopping": True},
]
BAD = [
    ("num_beams", {"num_beams": 0}),
    ("num_return_sequences", {"num_beams": 2, "num_return_sequences": 3}),
    ("length_penalty", {"length_penalty": float("inf")}),
    ("max_length", {"max_new_tokens": 4, "max_length": 9}),
]


def _in_process(row):
    kwargs = {**helpers.BEAM_DEFAULTS, **row}
    prompt = kwargs.pop("prompt")
    kwargs = {k: (None if v == -1 else v) for k, v in kwargs.items()}
    return helpers.byte_model().generate(
        prompt, return_details=True, jit_compile=False, **kwargs
    )


@pytest.fixture(scope="module")
def served():
    bad = [helpers.beam_request([{"prompt": "a", **c}]) for _, c in BAD]
    mixed = helpers.beam_request(
        [{"prompt": "a", "num_beams": n} for n in (2, 3)]
    )
    requests = [
        helpers.beam_request(ROWS),
        *[helpers.beam_request([r]) for r in ONE],
        mixed,
        *bad,
    ]
    report = helpers.serving_check(helpers.byte_export(), requests)
    return report["results"]


def _check_same(outputs, local, rows=slice(None)):
    texts = [helpers.as_bytes(t).decode("utf-8", "replace") for t in outputs]
    assert texts[rows] == local["outputs"]


def test_beams_match_in_process(served):
    out = served[0]["outputs"]
    assert out["prompt_index"] == [0, 0, 0, 1, 1, 1]
    for p, row in enumerate(ROWS):
        local = _in_process(row)
        rows = slice(3 * p, 3 * p + 3)
        _check_same(out["text"], local, rows)
        assert out["num_tokens"][rows] == local["num_tokens"]
        assert out["stop_reason"][rows] == local["stop_reason"]
        np.testing.assert_allclose(out["score"][rows], local["score"], 1e-5)
        assert out["score"][rows] == sorted(out["score"][rows], reverse=True)
        assert len({tuple(r) for r in out["token_ids"][rows]}) == 3
    for result, row in zip(served[1:3], ONE, strict=True):
        local = _in_process(row)
        _check_same(result["outputs"]["text"], {"outputs": [local["outputs"]]})
        np.testing.assert_allclose(
            result["outputs"]["score"], local["score"], 1e-5
        )


def test_bad_input_fails_naming_the_input(served):
    error = served[3].get("error")
    assert error and "num_beams" in error["message"]
    for (name, _), result in zip(BAD, served[4:], strict=True):
        error = result.get("error")
        assert error, name
        assert error["code"] == "InvalidArgumentError", error
        assert name in error["message"], error
