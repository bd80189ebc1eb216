"""Default learning rates: each preset's own, measured for short runs."""

import argparse

import pytest
import train_helpers

from tflm import errors
from tflm.models import presets
from tflm.train import config as config_lib
from tflm.train import fit
from tflm.train import state as state_lib

corpus = train_helpers.corpus


def _config(**values):
    return config_lib.TrainConfig(data=["corpus.txt"], out="model", **values)


def _resolved(config, resumed=None):
    return config_lib.resolve_learning_rate(config, resumed)


def test_every_preset_has_a_default_learning_rate():
    assert set(presets.LEARNING_RATES) == set(presets.PRESETS)
    assert all(0 < rate < 0.1 for rate in presets.LEARNING_RATES.values())


def test_a_mini_run_defaults_to_its_measured_rate_not_3e_4():
    # 3e-4 left a 400-step mini run far from converged; see
    # docs/performance.md, "Learning rates for short runs".
    config = _resolved(_config(preset="mini"))
    assert config.learning_rate == presets.LEARNING_RATES["mini"]
    assert config.learning_rate >= 1e-3


@pytest.mark.parametrize(
    "preset, rate", [("nano-char", 4e-3), ("mini", 2e-3), ("gpt2-124m", 6e-4)]
)
def test_the_default_is_the_presets_and_a_given_rate_wins(preset, rate):
    assert _resolved(_config(preset=preset)).learning_rate == rate
    given = _resolved(_config(preset=preset, learning_rate=5e-5))
    assert given.learning_rate == 5e-5


def test_a_run_from_a_model_defaults_to_the_fine_tuning_rate():
    config = _resolved(_config(init_from="parent"))
    assert config.learning_rate == config_lib.INIT_FROM_LEARNING_RATE


def test_the_floor_is_checked_against_the_default_rate():
    rate = presets.LEARNING_RATES["mini"]
    with pytest.raises(errors.InputError, match="--min-learning-rate must be"):
        _resolved(_config(preset="mini", min_learning_rate=rate * 2))
    # Against the resumed run's rate, when that is the one used.
    floor = _config(preset="mini", min_learning_rate=rate * 2)
    assert _resolved(floor, {"learning_rate": 1}).learning_rate == 1
    with pytest.raises(errors.InputError, match="--min-learning-rate must be"):
        _resolved(floor, {"learning_rate": rate})


def test_a_resumed_run_keeps_its_rate_unless_one_is_given():
    # A run started before the per-preset defaults (3e-4) resumes at 3e-4.
    resumed = _resolved(_config(preset="mini"), {"learning_rate": 3e-4})
    assert resumed.learning_rate == 3e-4
    given = _config(preset="mini", learning_rate=5e-5)
    assert _resolved(given, {"learning_rate": 3e-4}).learning_rate == 5e-5


def test_resuming_without_a_rate_keeps_the_runs_schedule(corpus, tmp_path):
    settings = train_helpers.tiny_config(corpus, tmp_path / "out", steps=3)
    first = {**settings, "learning_rate": 3e-4}
    fit.train(config_lib.TrainConfig(**first), verbose=0)
    del settings["learning_rate"]  # the same command, resumed
    fit.train(config_lib.TrainConfig(**{**settings, "steps": 6}), verbose=0)
    out = settings["out"]
    assert state_lib.read(out).config["learning_rate"] == 3e-4
    rates = [r["learning_rate"] for r in state_lib.read_log(out) if "loss" in r]
    assert len(rates) == 6 and max(rates) <= 3e-4 * (1 + 1e-6)


def test_the_help_says_where_the_default_comes_from():
    parser = argparse.ArgumentParser()
    config_lib.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "learning_rate")
    assert action.default is None
    assert "the preset's" in action.help
    assert "docs/performance.md" in action.help
    assert "a resumed run keeps its own" in action.help
