"""The export under TF Serving's conditions (`serving_check.py`): a TF1
`Session`, `saved_model.loader.load`, XLA disabled, REST-converted inputs."""

import json

import numpy as np
import pytest
import serving_helpers as helpers
import tensorflow as tf

from tflm import export as export_lib
from tflm.generation import loop

CONTRACT = helpers.CONTRACT
BYTES_PROMPT = b"\xff\xfe ab\x80"
TEXTS = ["To be, or not to be", "", "héllo"]
# (input changed, value) -> the error must name that input.
INVALID = [
    ("temperature", -1.0),
    ("temperature", float("nan")),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_k", -1),
    ("max_new_tokens", -1),
]


def _valid_row():
    return ("a", 4, 0.0, 0, 1.0, 0)


def _invalid_requests():
    bodies = []
    for name, value in INVALID:
        body = helpers.columnar([_valid_row()])
        body["inputs"][name] = [value]
        bodies.append(body)
    for name in helpers.SETTINGS:  # one value for two prompts
        body = helpers.columnar([_valid_row(), _valid_row()])
        body["inputs"][name] = body["inputs"][name][:1]
        bodies.append(body)
    return bodies


def _requests():
    rows = helpers.ROWS
    row_format = {
        "signature_name": "serving_default",
        "instances": [
            dict(zip(("prompt", *helpers.SETTINGS), row, strict=True))
            for row in rows
        ],
    }
    ids = [[5, 20, 30, 0], [40, 41, 42, 43]]
    return {
        "rows": helpers.columnar(rows),
        "rows_row_format": row_format,
        "bytes_prompt": helpers.columnar([(BYTES_PROMPT, 6, 0.0, 0, 1.0, 0)]),
        "cap": helpers.columnar([("cap", 1000, 0.0, 0, 1.0, 0)]),
        "empty_batch": helpers.columnar([]),
        "generate": helpers.full_request(
            [{"prompt": t, "max_new_tokens": 4} for t in TEXTS]
        ),
        "beam_search": helpers.beam_request(
            [{"prompt": t, "max_new_tokens": 4, "num_beams": 2} for t in TEXTS]
        ),
        "score": {"signature_name": "score", "inputs": {"text": TEXTS}},
        "tokenize": {"signature_name": "tokenize", "inputs": {"text": TEXTS}},
        "detokenize": {
            "signature_name": "detokenize",
            "inputs": {"token_ids": ids, "num_tokens": [3, 4]},
        },
        **{f"invalid_{i}": b for i, b in enumerate(_invalid_requests())},
        # REST conversion rules: no defaults, and types are checked.
        "rest_missing_key": {
            "instances": [
                {
                    k: v
                    for k, v in row_format["instances"][0].items()
                    if k != "seed"
                }
            ]
        },
        "rest_float_for_int": {
            "instances": [{**row_format["instances"][0], "top_k": 1.5}]
        },
    }


@pytest.fixture(scope="module")
def byte_run():
    requests = _requests()
    report = helpers.serving_check(
        helpers.byte_export(), list(requests.values()), warmup=True
    )
    return report, dict(zip(requests, report["results"], strict=True))


def _outputs(result):
    assert "error" not in result, result.get("error")
    return result["outputs"]


def _assert_same_as_generate(outputs, expected):
    texts = [helpers.as_bytes(t) for t in outputs["text"]]
    assert [t.decode("utf-8", "replace") for t in texts] == expected["outputs"]
    assert outputs["num_tokens"] == expected["num_tokens"]
    assert outputs["stop_reason"] == expected["stop_reason"]
    for row, ids, n in zip(
        outputs["token_ids"],
        expected["token_ids"],
        outputs["num_tokens"],
        strict=True,
    ):
        assert row[:n] == ids


def test_xla_is_really_disabled(byte_run):
    report, _ = byte_run
    assert report["xla_disabled"], report["xla_error"]
    assert "XLA compilation disabled" in report["xla_error"]
    assert report["graph"]["must_compile"] == []
    assert not [op for op in report["graph"]["ops"] if op.startswith("Xla")]


def test_only_core_tensorflow_ops_with_byte_tokenizer(byte_run):
    report, _ = byte_run
    assert report["non_core_ops"] == [] and report["unknown_ops"] == []


def test_signature_defs_are_the_contract(byte_run):
    report, _ = byte_run
    assert set(report["signatures"]) == set(CONTRACT)
    for key, (inputs, outputs) in CONTRACT.items():
        sig = report["signatures"][key]
        assert sig["method_name"] == "tensorflow/serving/predict"
        for declared, expected in (
            (sig["inputs"], inputs),
            (sig["outputs"], outputs),
        ):
            got = {k: (v["dtype"], v["shape"]) for k, v in declared.items()}
            assert got == expected, key


def test_every_signature_and_warmup_request_runs(byte_run):
    report, results = byte_run
    ran = {r["signature_name"] for r in results.values() if "outputs" in r}
    assert ran == set(CONTRACT)
    assert len(report["warmup"]) >= len(CONTRACT)
    assert {w["signature_name"] for w in report["warmup"]} == set(CONTRACT)
    assert [w for w in report["warmup"] if "error" in w] == []


def test_generate_matches_in_process_generate(byte_run):
    _, results = byte_run
    expected = helpers.generate(helpers.byte_model(), helpers.ROWS)
    _assert_same_as_generate(_outputs(results["rows"]), expected)
    assert results["rows_row_format"]["format"] == "row"
    assert _outputs(results["rows_row_format"]) == _outputs(results["rows"])
    assert set(expected["stop_reason"]) <= set(loop.STOP_REASONS)


def test_generate_matches_xla_generate_on_tiny_model(byte_run):
    _, results = byte_run
    expected = helpers.generate(
        helpers.byte_model(), helpers.ROWS, jit_compile=True
    )
    _assert_same_as_generate(_outputs(results["rows"]), expected)


def test_any_byte_string_is_a_prompt(byte_run):
    _, results = byte_run
    outputs = _outputs(results["bytes_prompt"])
    ids = [b + 3 for b in BYTES_PROMPT]  # ByteTokenizer: byte b is id b + 3
    expected = helpers.byte_model().generate(
        [ids], max_new_tokens=6, jit_compile=False
    )
    n = outputs["num_tokens"][0]
    assert outputs["token_ids"][0][:n] == expected[0]


def test_max_new_tokens_is_capped_by_the_context(byte_run):
    _, results = byte_run
    outputs = _outputs(results["cap"])
    assert outputs["num_tokens"][0] <= helpers.CONTEXT - 1
    expected = helpers.generate(
        helpers.byte_model(), [("cap", helpers.CONTEXT - 1, 0.0, 0, 1.0, 0)]
    )
    _assert_same_as_generate(outputs, expected)


def test_empty_batch(byte_run):
    _, results = byte_run
    outputs = _outputs(results["empty_batch"])
    assert outputs["text"] == [] and outputs["num_tokens"] == []


@pytest.mark.parametrize("index", range(len(INVALID) + len(helpers.SETTINGS)))
def test_invalid_inputs_fail_with_a_message_naming_the_input(byte_run, index):
    _, results = byte_run
    error = results[f"invalid_{index}"].get("error")
    assert error is not None and error["code"] == "InvalidArgumentError"
    names = [n for n, _ in INVALID] + list(helpers.SETTINGS)
    assert f"{names[index]} " in error["message"], error["message"]


def test_rest_bodies_follow_tf_serving_rules(byte_run):
    _, results = byte_run
    missing = results["rest_missing_key"]["error"]["message"]
    assert "keys must be equal to" in missing
    wrong_type = results["rest_float_for_int"]["error"]["message"]
    assert "is not of expected type: int32" in wrong_type


def test_score_tokenize_detokenize(byte_run):
    _, results = byte_run
    lm = helpers.byte_model()
    tokenizer = lm.tokenizer
    tokens = _outputs(results["tokenize"])
    expected = tokenizer.tokenize(TEXTS).to_list()
    assert tokens["num_tokens"] == [len(r) for r in expected]
    for row, ids in zip(tokens["token_ids"], expected, strict=True):
        assert row[: len(ids)] == ids
    text = _outputs(results["detokenize"])["text"]
    want = tokenizer.detokenize(
        tf.ragged.constant([[5, 20, 30], [40, 41, 42, 43]])
    ).numpy()
    assert [helpers.as_bytes(t) for t in text] == [bytes(b) for b in want]
    score = _outputs(results["score"])
    for text, log_likelihood, n in zip(
        TEXTS, score["log_likelihood"], score["num_tokens"], strict=True
    ):
        want, want_n = _score(lm, text)
        assert n == want_n
        assert log_likelihood == pytest.approx(want, abs=1e-3)


def _score(lm, text):
    ids = [lm.tokenizer.eos_id] + lm.tokenizer.tokenize(text).numpy().tolist()
    if len(ids) == 1:
        return 0.0, 0
    inputs = {
        "token_ids": np.array([ids]),
        "padding_mask": np.ones((1, len(ids)), "int32"),
    }
    log_probs = tf.nn.log_softmax(lm(inputs)[0, :-1]).numpy()
    picked = log_probs[np.arange(len(ids) - 1), ids[1:]]
    return float(picked.sum()), len(ids) - 1


def test_sentencepiece_export_under_serving_conditions():
    lm = helpers.sp_model()
    rows = helpers.ROWS[:5]
    requests = [
        helpers.columnar(rows),
        helpers.columnar([(BYTES_PROMPT, 5, 0.0, 0, 1.0, 0)]),
        {"signature_name": "tokenize", "inputs": {"text": TEXTS}},
    ]
    report = helpers.serving_check(helpers.sp_export(), requests, warmup=True)
    assert report["xla_disabled"]
    assert set(report["non_core_ops"]) == {
        "SentencepieceOp",
        "SentencepieceTokenizeOp",
        "SentencepieceDetokenizeOp",
    }
    assert report["unknown_ops"] == []
    assert [w for w in report["warmup"] if "error" in w] == []
    generated, bytes_prompt, tokens = report["results"]
    _assert_same_as_generate(_outputs(generated), helpers.generate(lm, rows))
    assert _outputs(bytes_prompt)["num_tokens"][0] >= 0
    expected = lm.tokenizer.tokenize(TEXTS).to_list()
    assert _outputs(tokens)["num_tokens"] == [len(r) for r in expected]


def test_xla_export_needs_xla_in_the_server(tmp_path):
    path = export_lib.export(
        helpers.byte_model(), str(tmp_path), jit_compile=True, warmup=False
    )
    report = helpers.serving_check(path, [helpers.columnar(helpers.ROWS[:1])])
    assert report["graph"]["must_compile"]
    error = report["results"][0]["error"]
    assert "XLA compilation disabled" in error["message"]


def test_xla_export_runs_where_xla_is_on(tmp_path):
    # XLA has no kernel for the plain graph's in-place cache write: the XLA
    # export must use the scatter, and give the plain export's text.
    model = helpers.byte_model()
    path = export_lib.export(
        model, str(tmp_path), jit_compile=True, warmup=False
    )
    loaded = tf.saved_model.load(path)
    rows = [r for r in helpers.ROWS[:2]]
    columns = list(zip(*rows, strict=True))
    inputs = {"prompt": tf.constant(list(columns[0]))}
    dtypes = (tf.int32, tf.float32, tf.int32, tf.float32, tf.int32)
    for name, values, dtype in zip(
        helpers.SETTINGS, columns[1:], dtypes, strict=True
    ):
        inputs[name] = tf.constant(list(values), dtype)
    out = loaded.signatures["serving_default"](**inputs)
    expected = helpers.generate(model, rows)
    texts = [t.decode("utf-8", "replace") for t in out["text"].numpy()]
    assert texts == expected["outputs"]


# TF Serving with `--xla_cpu_compilation_enabled=true`: the same session
# loader, XLA left on; the warm-up records replayed, then the rows.
_XLA_ON = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("check", sys.argv[1])
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)
import tensorflow_text  # noqa: F401
server = check.Server(sys.argv[2])
warmup = []
for name, arrays in check.warmup_requests(
    sys.argv[2] + "/" + check.WARMUP_FILE
):
    try:
        server.run(name, arrays)
        warmup.append({"signature_name": name})
    except Exception as e:  # noqa: BLE001
        warmup.append({"signature_name": name, "error": str(e)[:500]})
rows = json.loads(sys.argv[3])
print(json.dumps({"warmup": warmup, "result": server.rest(rows)}))
"""


def test_xla_export_serves_through_the_session_loader_with_xla_on(tmp_path):
    model = helpers.byte_model()
    path = export_lib.export(model, str(tmp_path), jit_compile=True)
    rows = helpers.ROWS[:2]
    body = helpers.columnar(rows)
    report = helpers.run_python(
        ["-c", _XLA_ON, helpers.SERVING_CHECK, path, json.dumps(body)]
    )
    assert [w for w in report["warmup"] if "error" in w] == []
    outputs = report["result"]["outputs"]
    expected = helpers.generate(model, rows)
    texts = [
        helpers.as_bytes(t).decode("utf-8", "replace") for t in outputs["text"]
    ]
    assert texts == expected["outputs"]
    assert outputs["num_tokens"] == expected["num_tokens"]
