"""Exports with bfloat16 and int8 weights, run under TF Serving's conditions
(`serving_check.py`), give the text of in-process generation with the same
weights."""

import os

import pytest
import serving_helpers as helpers

from tflm import export as export_lib
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
