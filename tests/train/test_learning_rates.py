"""Default learning rates: each preset's own, measured for short runs."""

import argparse

import pytest

from tflm import errors
from tflm.models import presets
from tflm.train import config as config_lib


def _config(**values):
    return config_lib.TrainConfig(data=["corpus.txt"], out="model", **values)


def test_every_preset_has_a_default_learning_rate():
    assert set(presets.LEARNING_RATES) == set(presets.PRESETS)
    assert all(0 < rate < 0.1 for rate in presets.LEARNING_RATES.values())


def test_a_mini_run_defaults_to_its_measured_rate_not_3e_4():
    # 3e-4 left a 400-step mini run far from converged; see
    # docs/performance.md, "Learning rates for short runs".
    config = _config(preset="mini")
    assert config.learning_rate == presets.LEARNING_RATES["mini"]
    assert config.learning_rate >= 1e-3


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_the_default_is_the_presets_and_a_given_rate_wins(preset):
    assert _config(preset=preset).learning_rate == presets.learning_rate(preset)
    assert _config(preset=preset, learning_rate=5e-5).learning_rate == 5e-5


def test_a_run_from_a_model_defaults_to_the_fine_tuning_rate():
    config = _config(init_from="parent")
    assert config.learning_rate == config_lib.INIT_FROM_LEARNING_RATE


def test_the_floor_is_checked_against_the_default_rate():
    rate = presets.LEARNING_RATES["mini"]
    with pytest.raises(errors.InputError, match="--min-learning-rate must be"):
        _config(preset="mini", min_learning_rate=rate * 2)


def test_the_help_says_where_the_default_comes_from():
    parser = argparse.ArgumentParser()
    config_lib.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "learning_rate")
    assert action.default is None
    assert "the preset's" in action.help
    assert "docs/performance.md" in action.help
