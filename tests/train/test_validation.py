"""Bad `TrainConfig` values fail at once, naming the flag and the value.

Before these checks, `--learning-rate nan`, `-1` or `--beta-2 5` trained a
NaN (or useless) model and exited 0.
"""

import math
import os

import pytest
import train_helpers

from tflm import cli
from tflm import errors
from tflm.train import config as config_lib
from tflm.train import fit
from tflm.train import validation

corpus = train_helpers.corpus
NAN = math.nan
INF = math.inf


def _config(**overrides):
    settings = dict(data=["a.txt"], out="o", preset="tiny", steps=10)
    settings.update(warmup_steps=0)
    settings.update(overrides)
    return config_lib.TrainConfig(**settings)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(learning_rate=NAN),
            "--learning-rate must be a finite number > 0",
        ),
        (dict(learning_rate=-1.0), "--learning-rate must be a finite number"),
        (dict(learning_rate=0.0), "--learning-rate must be a finite number"),
        (dict(learning_rate=INF), "--learning-rate must be a finite number"),
        (dict(min_learning_rate=NAN), "--min-learning-rate must be a finite"),
        (dict(min_learning_rate=-1e-5), "--min-learning-rate must be"),
        (
            dict(min_learning_rate=1.0, learning_rate=0.5),
            "<= --learning-rate",
        ),
        (dict(beta_1=NAN), r"--beta-1 must be a number in \[0, 1\)"),
        (dict(beta_1=1.0), r"--beta-1 must be a number in \[0, 1\)"),
        (dict(beta_2=5.0), r"--beta-2 must be a number in \[0, 1\)"),
        (dict(beta_2=-0.1), r"--beta-2 must be a number in \[0, 1\)"),
        (dict(weight_decay=-0.1), "--weight-decay must be a finite number"),
        (dict(weight_decay=INF), "--weight-decay must be a finite number"),
        (dict(clip_norm=NAN), "--clip-norm must be a finite number >= 0"),
        (dict(clip_norm=-1.0), "--clip-norm must be a finite number >= 0"),
        (dict(dropout=1.0), r"--dropout must be a number in \[0, 1\)"),
        (dict(dropout=NAN), r"--dropout must be a number in \[0, 1\)"),
        (dict(validation_fraction=1.0), "--validation-fraction must be"),
        (dict(validation_fraction=NAN), "--validation-fraction must be"),
        (dict(steps=0), "--steps must be an integer >= 1"),
        (dict(steps=2.5), "--steps must be an integer >= 1"),
        (dict(epochs=0.0, steps=None), "--epochs must be a finite number > 0"),
        (dict(epochs=NAN, steps=None), "--epochs must be a finite number > 0"),
        (dict(batch_size=0), "--batch-size must be an integer >= 1"),
        (dict(batch_size=8, accumulation_steps=3), "multiple of --accum"),
        (dict(accumulation_steps=0), "--accumulation-steps must be an"),
        (dict(warmup_steps=-1), "--warmup-steps must be an integer >= 0"),
        (dict(warmup_steps=11), r"--warmup-steps must be <= --steps \(10\)"),
        (dict(sequence_length=0), "--sequence-length must be an integer"),
        (dict(sequence_length=17), r"context of preset 'tiny' \(16 tokens\)"),
        (dict(checkpoint_every=-1), "--checkpoint-every must be an integer"),
        (dict(validate_every=-1), "--validate-every must be an integer"),
        (dict(eval_batches=-1), "--eval-batches must be an integer >= 0"),
        (dict(log_every=0), "--log-every must be an integer >= 1"),
        (dict(seed=-1), r"--seed must be an integer in \[0, 4294967295\]"),
        (dict(jsonl_field=""), "--jsonl-field must be a field name"),
        (dict(data=[]), "--data must name at least one file"),
        (dict(steps=4, epochs=1.0), "Give --steps or --epochs, not both"),
        (dict(preset="huge"), "Unknown preset.*nano-char, tiny"),
        (dict(schedule="step"), "--schedule must be one of cosine"),
    ],
)
def test_bad_values_raise_input_error_naming_flag(overrides, message):
    with pytest.raises(errors.InputError, match=message) as info:
        _config(**overrides)
    name, value = next(iter(overrides.items()))
    if name not in ("data", "preset") and "not both" not in message:
        assert f"Received: {name}={value!r}" in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(beta_1=0.0, beta_2=0.0, weight_decay=0.0),
        dict(clip_norm=0.0),
        dict(clip_norm=None),
        dict(dropout=0.0, validation_fraction=0.0),
        dict(warmup_steps=10, min_learning_rate=3e-4, learning_rate=3e-4),
        dict(min_learning_rate=0.0, sequence_length=16),
        dict(checkpoint_every=0, validate_every=0, eval_batches=0),
        dict(steps=None, epochs=0.5),
        dict(learning_rate=1, seed=2**32 - 1),
    ],
)
def test_edge_values_are_accepted(overrides):
    config = _config(**overrides)
    for name, value in overrides.items():
        assert getattr(config, name) == value


def test_check_preset_gives_context_for_callers():
    assert validation.check_preset("tiny")["max_sequence_length"] == 16
    with pytest.raises(errors.InputError, match="sequence_length=99"):
        validation.check_preset("tiny", 99)


@pytest.mark.parametrize(
    "flag, value, shown",
    [
        ("--learning-rate", "nan", "learning_rate=nan"),
        ("--learning-rate", "-1", "learning_rate=-1.0"),
        ("--beta-2", "5", "beta_2=5.0"),
    ],
)
def test_cli_refuses_nan_and_negative_settings(
    corpus, tmp_path, capsys, flag, value, shown
):
    argv = ["train", "--data", corpus, "--out", str(tmp_path / "m")]
    argv += ["--preset", "tiny", "--steps", "4", "--warmup-steps", "1"]
    assert cli.main([*argv, flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be" in err and f"Received: {shown}." in err
    assert len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_warmup_longer_than_an_epoch_run_fails_before_writing(corpus, tmp_path):
    config = config_lib.TrainConfig(
        **train_helpers.tiny_config(
            corpus, tmp_path / "m", steps=None, epochs=1, warmup_steps=10**6
        )
    )
    with pytest.raises(errors.InputError, match="the run's .* steps"):
        fit.train(config, verbose=0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "given, total, expected",
    [(None, 40, 4), (None, 5000, 100), (None, 5, 0), (7, 40, 7), (40, 40, 40)],
)
def test_default_warmup_fits_any_run(given, total, expected):
    assert validation.resolve_warmup(given, total) == expected
