"""A run whose loss or weights stop being finite stops with a clear error.

Before, such a run went on, wrote NaN weights at every checkpoint and
exited 0 (`tflm eval` of it: see `test_evaluate.py`).
"""

import os

import numpy as np
import pytest
import train_helpers

from tflm import errors
from tflm.models import causal_lm
from tflm.train import config as config_lib
from tflm.train import fit
from tflm.train import state


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Small, to keep the runs short: 60 paragraphs, about 20 batches."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    return train_helpers.write_corpus(path, paragraphs=60)


def _config(corpus, out, **overrides):
    # A learning rate of 1e30 makes the weights about 1e30 after the first
    # update, so the logits (and the loss of step 2) overflow.
    settings = dict(learning_rate=1e30, warmup_steps=0, validation_fraction=0)
    settings.update(overrides)
    return config_lib.TrainConfig(
        **train_helpers.tiny_config(corpus, out, **settings)
    )


def _saved_step(out):
    return state.read(str(out)).step


def _weights_are_finite(out):
    model = causal_lm.CausalLM.from_preset(out)
    return all(np.isfinite(w).all() for w in model.get_weights())


def test_nan_loss_on_a_checkpoint_step_keeps_the_previous_one(corpus, tmp_path):
    out = tmp_path / "model"
    # The loss of step 2 is NaN, and step 2 is a checkpoint step: the guard
    # runs before the checkpointer, so the step-0 checkpoint is kept.
    with pytest.raises(errors.InputError) as info:
        fit.train(_config(corpus, out, checkpoint_every=2), verbose=0)
    message = str(info.value)
    assert "Training diverged at step 2: the loss is nan." in message
    assert f"{out} keeps the checkpoint of step 0" in message
    assert "Lower --learning-rate (now 1e+30)" in message
    assert "resume from step 0" in message
    assert _saved_step(out) == 0 and _weights_are_finite(out)
    assert sorted(train_helpers.step_losses(str(out))) == [1]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    # The kept checkpoint resumes with a sane learning rate.
    result = fit.train(
        _config(corpus, out, checkpoint_every=2, learning_rate=1e-2),
        verbose=0,
    )
    assert (result.start_step, result.step) == (0, 6)
    assert _weights_are_finite(out)


def test_a_kept_checkpoint_that_gave_the_nan_loss_is_called_so(
    corpus, tmp_path
):
    out = tmp_path / "model"
    with pytest.raises(errors.InputError) as info:
        fit.train(_config(corpus, out, checkpoint_every=1), verbose=0)
    # Step 1's finite but huge weights were saved, and they gave the NaN
    # loss of step 2: resuming from them would diverge again.
    assert _saved_step(out) == 1 and _weights_are_finite(out)
    assert "resuming would diverge again" in str(info.value)
    assert "name a new --out" in str(info.value)


def test_weights_that_overflow_after_a_finite_loss_are_not_saved(
    corpus, tmp_path
):
    out = tmp_path / "model"
    # 1e39 is infinite in float32: step 1's loss is finite, its update not.
    with pytest.raises(errors.InputError) as info:
        fit.train(
            _config(corpus, out, checkpoint_every=1, learning_rate=1e39),
            verbose=0,
        )
    message = str(info.value)
    assert "Training diverged at step 1:" in message
    assert "variables are not finite (token_embedding/embeddings" in message
    assert "resume from step 0" in message
    assert _saved_step(out) == 0 and _weights_are_finite(out)
