"""Exports with bfloat16 and int8 weights, run under TF Serving's conditions
(`serving_check.py`), give the text of in-process generation with the same
weights."""

import os

import pytest
import serving_helpers as helpers

from tflm import export as export_lib
from tflm.export import layout
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


def _ops_in(path: str) -> set:
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node}
    for function in graph.library.function:
        ops.update(n.op for n in function.node_def)
    return ops


@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
def test_row_blocks_serve_the_same_text(weights, monkeypatch):
    # The test model's kernels are below the size that gets row blocks:
    # lower it, so that every projection is multiplied in four blocks.
    monkeypatch.setattr(layout, "ROW_BLOCK_MIN_BYTES", 0)
    monkeypatch.setattr(layout, "ROW_BLOCK_MIN_ROWS", 1)
    model = helpers.byte_model()
    base = os.path.join(helpers.workdir(), f"byte-blocks-{weights}")
    path = export_lib.export(model, base, weights=weights, warmup=False)
    assert "SplitV" in _ops_in(path)
    report = helpers.serving_check(path, [helpers.columnar(ROWS)])
    assert report["xla_disabled"]
    (generated,) = report["results"]
    assert "error" not in generated
    expected = helpers.generate(weights_lib.converted(model, weights), ROWS)
    texts = [helpers.as_bytes(t) for t in generated["outputs"]["text"]]
    assert [t.decode("utf-8", "replace") for t in texts] == expected["outputs"]
    assert generated["outputs"]["num_tokens"] == expected["num_tokens"]
