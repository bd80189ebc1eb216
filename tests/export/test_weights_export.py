"""Exports with bfloat16 and int8 weights, run under TF Serving's conditions
(`serving_check.py`), give the text of in-process generation with the same
weights."""

import os

import numpy as np
import pytest
import serving_helpers as helpers

from tflm import export as export_lib
from tflm.models import decode_plan
from tflm.models import weights as weights_lib

ROWS = helpers.ROWS[:3]


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_export_with_weights_serves_the_same_text(weights):
    model = helpers.byte_model()
    base = os.path.join(helpers.workdir(), f"byte-{weights}")
    path = export_lib.export(model, base, weights=weights, warmup=False)
    assert weights_lib.weights_of(model) == "float32"  # exported a copy
    score = {"signature_name": "score", "inputs": {"text": ["To be", "x"]}}
    report = helpers.serving_check(path, [helpers.columnar(ROWS), score])
    assert report["xla_disabled"]
    assert report["non_core_ops"] == [] and report["unknown_ops"] == []
    generated, scored = report["results"]
    assert "error" not in generated and "error" not in scored
    converted = weights_lib.converted(model, weights)
    expected = helpers.generate(converted, ROWS)
    texts = [helpers.as_bytes(t) for t in generated["outputs"]["text"]]
    assert [t.decode("utf-8", "replace") for t in texts] == expected["outputs"]
    assert generated["outputs"]["num_tokens"] == expected["num_tokens"]
    log_likelihood = scored["outputs"]["log_likelihood"]
    assert all(value < 0 for value in log_likelihood)


def _loop_bodies_ops(path: str) -> list:
    """Op types of each `while` body function in the SavedModel."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    library = saved.meta_graphs[0].graph_def.library.function
    return [
        [n.op for n in f.node_def]
        for f in library
        if "_body_" in f.signature.name
    ]


def _served(model, weights: str, blocks: int, monkeypatch) -> tuple:
    # The test model's kernels are below the size that gets row blocks:
    # lower it, so that every projection is multiplied in `blocks` blocks.
    monkeypatch.setattr(decode_plan, "ROW_BLOCKS", blocks)
    monkeypatch.setattr(decode_plan, "ROW_BLOCK_MIN_BYTES", 0)
    monkeypatch.setattr(decode_plan, "ROW_BLOCK_MIN_ROWS", 1)
    base = os.path.join(helpers.workdir(), f"byte-{weights}-{blocks}-blocks")
    path = export_lib.export(model, base, weights=weights, warmup=False)
    score = {"signature_name": "score", "inputs": {"text": ["To be", "x"]}}
    beams = helpers.beam_request([{"prompt": "To be", "max_new_tokens": 6}])
    requests = [helpers.columnar(ROWS), score, beams]
    report = helpers.serving_check(path, requests)
    assert report["xla_disabled"]
    assert all("error" not in result for result in report["results"])
    return path, [result["outputs"] for result in report["results"]]


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_row_blocks_serve_what_one_product_serves(weights, monkeypatch):
    model = helpers.byte_model()
    _, whole = _served(model, weights, 1, monkeypatch)
    path, split = _served(model, weights, 4, monkeypatch)
    # Split once, before the loops: no loop body splits a kernel.
    bodies = _loop_bodies_ops(path)
    assert len(bodies) >= 2 and not any("SplitV" in b for b in bodies)
    assert sum(b.count("MatMul") for b in bodies) > 0
    (generated, scored, beams), (generated_1, scored_1, beams_1) = split, whole
    # The same tokens; scores to the last bits (the test model's blocks of
    # 16 rows may take another oneDNN kernel than the whole product).
    assert generated["token_ids"] == generated_1["token_ids"]
    assert generated["text"] == generated_1["text"]
    assert beams["token_ids"] == beams_1["token_ids"]
    np.testing.assert_allclose(beams["score"], beams_1["score"], rtol=1e-5)
    np.testing.assert_allclose(
        scored["log_likelihood"], scored_1["log_likelihood"], rtol=1e-5
    )
    # And the text of in-process generation with the same weights.
    expected = helpers.generate(weights_lib.converted(model, weights), ROWS)
    texts = [helpers.as_bytes(t) for t in generated["text"]]
    assert [t.decode("utf-8", "replace") for t in texts] == expected["outputs"]
