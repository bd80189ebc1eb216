import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import train_helpers

from tflm import errors
from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.models import optimizer as optimizer_lib
from tflm.train import config as config_lib
from tflm.train import fit
from tflm.train import inputs

corpus = train_helpers.corpus


def _train(corpus, out, **overrides):
    config = config_lib.TrainConfig(
        **train_helpers.tiny_config(corpus, out, **overrides)
    )
    return fit.train(config, verbose=0)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    return _train(corpus, out, dropout=0.1), str(out)


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".")]


def _tensorboard_tags(log_dir):
    tags = set()
    for name in os.listdir(log_dir):
        if name.startswith("events.out.tfevents"):
            path = os.path.join(log_dir, name)
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                tags.update(value.tag for value in event.summary.value)
    return tags


def test_train_writes_model_directory_logs_and_state(trained):
    result, out = trained
    assert sorted(os.listdir(out)) == [
        "config.json",
        "logs",
        "model.weights.h5",
        "tokenizer",
        "train",
    ]
    assert sorted(os.listdir(os.path.join(out, "train"))) == [
        "optimizer.npz",
        "rng.npz",
        "state.json",
    ]
    with open(os.path.join(out, "train", "state.json")) as f:
        state = json.load(f)
    assert (state["step"], state["total_steps"]) == (6, 6)
    assert state["config"]["preset"] == "tiny"
    records = [
        json.loads(line)
        for line in open(os.path.join(out, "logs", "metrics.jsonl"))
    ]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    schedule = optimizer_lib.WarmupDecay(1e-2, 2, 6, 1e-3)
    for record in steps:
        assert record["learning_rate"] == pytest.approx(
            float(schedule(record["step"] - 1)), rel=1e-5
        )
        assert record["tokens_per_second"] > 0
    validations = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validations] == [3, 6]
    assert result.validation_loss == pytest.approx(validations[-1]["val_loss"])
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert {
        "loss",
        "perplexity",
        "learning_rate",
        "tokens_per_second",
        "val_loss",
        "val_perplexity",
    } <= _tensorboard_tags(os.path.join(out, "logs"))
    assert _leftovers(os.path.dirname(out)) == []


def test_saved_model_loads_with_the_same_outputs(trained):
    result, out = trained
    model = causal_lm.CausalLM.from_preset(out)
    ids = np.arange(1, 9, dtype="int32")[None]
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_allclose(model(x), result.model(x), atol=1e-6)
    assert model.tokenizer.type_name == "byte"


def test_a_finished_run_is_not_trained_again(trained, corpus):
    _, out = trained
    before = os.path.getmtime(os.path.join(out, "model.weights.h5"))
    result = _train(corpus, out, dropout=0.1)
    assert result.step == result.start_step == 6
    assert os.path.getmtime(os.path.join(out, "model.weights.h5")) == before


class _Crash(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == 4:
            raise RuntimeError("crash")


def test_a_crashed_run_resumes_exactly_with_dropout(trained, corpus, tmp_path):
    result, reference = trained
    out = tmp_path / "model"
    config = config_lib.TrainConfig(
        **train_helpers.tiny_config(corpus, out, dropout=0.1)
    )
    with pytest.raises(RuntimeError, match="crash"):
        fit.train(config, verbose=0, callbacks=[_Crash()])
    resumed = fit.train(config, verbose=0)
    assert (resumed.start_step, resumed.step) == (3, 6)
    expected = train_helpers.step_losses(reference)
    losses = train_helpers.step_losses(out)
    assert sorted(losses) == list(range(1, 7))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, 7)],
        [expected[s] for s in range(1, 7)],
        atol=1e-5,
    )
    assert resumed.validation_loss == pytest.approx(
        result.validation_loss, abs=1e-5
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(preset="nano-char"), "another architecture"),
        (dict(dropout=0.0), "another architecture"),
        (dict(tokenizer="sentencepiece:300"), "another tokenizer"),
    ],
)
def test_an_incompatible_run_is_refused(trained, corpus, overrides, message):
    _, out = trained
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match=message) as info:
        _train(corpus, out, **overrides)
    if "architecture" in message:
        # An InputError: the CLI shows it as one line, never a traceback.
        assert isinstance(info.value, errors.InputError)
    assert sorted(os.listdir(out)) == before


def test_a_folder_with_other_files_is_never_touched(corpus, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no tflm model"):
        _train(corpus, tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        _train(corpus, tmp_path / "file")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(preset="huge"), "Unknown preset"),
        (dict(sequence_length=64), "context of preset 'tiny'"),
        (dict(accumulation_steps=3), "multiple of"),
        (dict(tokenizer="missing-folder"), "no such directory"),
        (dict(tokenizer="sentencepiece:x"), "integer N"),
        (dict(batch_size=4096), "one batch needs 4096"),
        (dict(validation_fraction=0.001), "'validation' split"),
    ],
)
def test_bad_settings_fail_before_writing(corpus, tmp_path, overrides, message):
    out = tmp_path / "model"
    with pytest.raises(ValueError, match=message):
        _train(corpus, out, **overrides)
    assert os.listdir(tmp_path) == []


def test_config_validation():
    with pytest.raises(errors.InputError, match="--steps or --epochs"):
        config_lib.TrainConfig(
            data=["a"], out="o", preset="tiny", steps=1, epochs=1
        )
    with pytest.raises(errors.InputError, match="--precision must be one of"):
        config_lib.TrainConfig(
            data=["a"], out="o", preset="tiny", precision="fp8"
        )
    with pytest.raises(errors.InputError, match="--batch-size must be an"):
        config_lib.TrainConfig(data=["a"], out="o", preset="tiny", batch_size=0)


def test_epochs_sentencepiece_accumulation_and_bf16(corpus, tmp_path):
    held_out = train_helpers.write_corpus(tmp_path / "val.txt", 40, seed=1)
    result = _train(
        corpus,
        tmp_path / "model",
        steps=None,
        epochs=1,
        tokenizer="sentencepiece:300",
        validation_data=[held_out],
        accumulation_steps=2,
        precision="mixed_bfloat16",
        checkpoint_every=0,
        validate_every=0,
    )
    config = config_lib.TrainConfig(
        **train_helpers.tiny_config(
            corpus, tmp_path, validation_data=[held_out]
        )
    )
    per_epoch = inputs.batches_per_epoch(config, result.model.tokenizer, 16)
    assert result.step == per_epoch
    assert result.model.tokenizer.vocabulary_size == 300
    assert result.validation_loss < np.log(300)
    saved = model_dir.validate(tmp_path / "model")
    assert saved["backbone"]["dtype"] == "float32"
    assert saved["tokenizer"]["type"] == "sentencepiece"
