"""A LoRA model exports merged: under TF Serving's conditions
(`serving_check.py`) it has a plain export's ops and no adapter variables,
and answers as the unmerged model's greedy `generate`."""

import os

import keras
import numpy as np
import serving_helpers as helpers
import tensorflow as tf

from tflm import export as export_lib
from tflm.export import serving_check
from tflm.models import lora
from tflm.models.causal_lm import CausalLM

ROWS = [row for row in helpers.ROWS if row[2] == 0.0][:2]  # greedy rows


def _lora_model() -> CausalLM:
    base = helpers.byte_model()
    lm = type(base).from_config(base.get_config())
    lm.set_weights(base.get_weights())
    lm.tokenizer = base.tokenizer
    lora.enable_lora(lm, rank=2, targets=["query", "value", "mlp_out"])
    rng = np.random.default_rng(3)
    for v in lm.trainable_variables:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    return lm


def _variables(path):
    """The shapes of an export's variables, sorted."""
    listed = tf.train.list_variables(
        os.path.join(path, "variables", "variables")
    )
    return sorted(shape for name, shape in listed if name.startswith("serv"))


def test_merged_export_serves_the_lora_models_greedy_text():
    keras.utils.set_random_seed(0)
    lm = _lora_model()
    base = os.path.join(helpers.workdir(), "byte-lora")
    path = export_lib.export(lm, base, warmup=False)
    assert lora.lora_config(lm) is not None  # exported a merged copy
    report = helpers.serving_check(path, [helpers.columnar(ROWS)])
    assert report["xla_disabled"]
    assert report["non_core_ops"] == [] and report["unknown_ops"] == []
    plain = serving_check.graph_ops(helpers.byte_export())
    assert report["graph"]["ops"] == plain["ops"]  # no extra ops
    assert _variables(path) == _variables(helpers.byte_export())
    (generated,) = report["results"]
    assert "error" not in generated
    expected = helpers.generate(lm, ROWS)
    texts = [helpers.as_bytes(t) for t in generated["outputs"]["text"]]
    assert [t.decode("utf-8", "replace") for t in texts] == expected["outputs"]
    assert generated["outputs"]["num_tokens"] == expected["num_tokens"]
    # The adapters matter: the base model says something else.
    assert (
        helpers.generate(helpers.byte_model(), ROWS)["outputs"]
        != (expected["outputs"])
    )
