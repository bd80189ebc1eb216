"""Fine-tuning a parent stored in bfloat16 weights (int8 goes through
the same load; its dequantization is tested in tests/models)."""

import json
import os

import pytest
import train_helpers

from tflm.models import causal_lm
from tflm.models import weights as weights_lib
from tflm.train import fit


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return train_helpers.reversal_task(tmp_path_factory.mktemp("task"))


def _config(task, parent, out, steps):
    return train_helpers.task_config(
        task,
        out,
        init_from=parent,
        steps=steps,
        warmup_steps=5,
        checkpoint_every=20,
        validate_every=20,
        jit_compile="off",
        log_every=10,
    )


@pytest.fixture(scope="module")
def float32_loss(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("float32") / "tuned"
    return fit.train(
        _config(task, task["parent"], out, 40), verbose=0
    ).validation_loss


def test_a_bfloat16_parent_fine_tunes_and_resumes(task, tmp_path, float32_loss):
    lm = causal_lm.CausalLM.from_preset(task["parent"])
    parent = weights_lib.convert_weights(lm, "bfloat16").save_to_preset(
        str(tmp_path / "bfloat16")
    )
    out = tmp_path / "tuned"
    first = fit.train(_config(task, parent, out, 40), verbose=0)
    # Trained in float32 from the stored values: close to the float32
    # parent's run (a wrong dequantization starts elsewhere).
    assert weights_lib.weights_of(first.model) == "float32"
    assert first.validation_loss == pytest.approx(float32_loss, rel=0.05)
    with open(os.path.join(first.directory, "config.json")) as f:
        assert "weights" not in json.load(f)
    # The finished run trains on to a new total from its checkpoint.
    second = fit.train(_config(task, parent, out, 80), verbose=0)
    assert (second.start_step, second.step) == (40, 80)
    assert second.validation_loss < first.validation_loss
