import inspect

import numpy as np
import pytest

from tflm.errors import InputError
from tflm.models import PRESETS
from tflm.models import Backbone
from tflm.models import CausalLM
from tflm.models import get_preset

REQUIRED = {
    "vocabulary_size",
    "num_layers",
    "num_heads",
    "hidden_dim",
    "intermediate_dim",
    "max_sequence_length",
}
TINY = dict(
    vocabulary_size=32,
    num_layers=2,
    num_heads=2,
    hidden_dim=8,
    intermediate_dim=16,
    max_sequence_length=16,
)


def _shrink(name):
    """Tiny sizes, keeping the preset's family (norm, MLP, positions, heads)."""
    overrides = dict(TINY)
    preset = PRESETS[name]
    kv_heads = preset.get("num_key_value_heads", preset["num_heads"])
    if kv_heads < preset["num_heads"]:
        overrides.update(num_heads=4, num_key_value_heads=2, hidden_dim=16)
    return get_preset(name, **overrides)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_backbone_config(name):
    config = get_preset(name)
    assert REQUIRED <= set(config)
    params = set(inspect.signature(Backbone.__init__).parameters)
    assert set(config) <= params
    assert config["hidden_dim"] % config["num_heads"] == 0
    kv_heads = config.get("num_key_value_heads", config["num_heads"])
    assert config["num_heads"] % kv_heads == 0


@pytest.mark.parametrize(
    "name, layers, hidden, heads",
    [("gpt2-124m", 12, 768, 12), ("gpt2-355m", 24, 1024, 16)],
)
def test_gpt2_presets(name, layers, hidden, heads):
    config = get_preset(name)
    assert config["num_layers"] == layers
    assert config["hidden_dim"] == hidden
    assert config["num_heads"] == heads
    assert config["intermediate_dim"] == 4 * hidden
    assert config["vocabulary_size"] == 50257
    assert config["max_sequence_length"] == 1024
    assert config["norm"] == "layernorm"
    assert config["activation"] == "gelu"
    assert config["position_embedding"] == "learned"
    assert config["use_bias"] and config["tie_embeddings"]


def test_llama_preset():
    config = get_preset("llama-110m")
    assert config["norm"] == "rmsnorm"
    assert config["activation"] == "swiglu"
    assert config["position_embedding"] == "rotary"
    assert 1 < config["num_key_value_heads"] < config["num_heads"]
    assert config["use_bias"] is False


def test_tiny_preset_matches_test_sizes():
    config = get_preset("tiny")
    assert config["hidden_dim"] == 8 and config["num_heads"] == 2
    assert config["num_layers"] == 2 and config["vocabulary_size"] <= 32


def test_get_preset_merges_overrides_and_copies():
    config = get_preset("gpt2-124m", num_layers=2, dropout=0.1)
    assert config["num_layers"] == 2 and config["dropout"] == 0.1
    assert config["hidden_dim"] == 768
    config["hidden_dim"] = 1
    assert PRESETS["gpt2-124m"]["hidden_dim"] == 768
    assert PRESETS["gpt2-124m"]["num_layers"] == 12


def test_unknown_preset_lists_available_presets():
    with pytest.raises(ValueError, match="preset='gpt-9'") as info:
        get_preset("gpt-9")
    for name in PRESETS:
        assert name in str(info.value)


def _ids(vocab, shape=(2, 8), seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype("int32")


def _logits(lm, ids):
    mask = np.ones_like(ids)
    return np.asarray(lm({"token_ids": ids, "padding_mask": mask}))


@pytest.mark.parametrize("name", ["tiny", "nano-char"])
def test_small_presets_build_at_full_size(name):
    config = get_preset(name)
    lm = CausalLM.from_preset(name)
    vocab = config["vocabulary_size"]
    assert _logits(lm, _ids(vocab)).shape == (2, 8, vocab)
    assert len(lm.backbone.blocks) == config["num_layers"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shrunken_preset_causality_and_cache(name):
    config = _shrink(name)
    lm = CausalLM(Backbone(**config))
    assert lm.backbone.norm == config.get("norm", "layernorm")
    ids = _ids(32)
    full = _logits(lm, ids)
    assert full.shape == (2, 8, 32)
    changed = ids.copy()
    changed[:, 4] = (changed[:, 4] + 1) % 32
    after = _logits(lm, changed)
    np.testing.assert_array_equal(full[:, :4], after[:, :4])
    assert np.abs(full[:, 4:] - after[:, 4:]).max() > 1e-7
    cache = lm.backbone.init_cache(2, 8)
    mask = np.ones((2, 8), "int32")
    steps = []
    for i in range(8):
        positions = np.full((2, 1), i, "int32")
        logits, _, cache = lm.call_with_cache(
            ids[:, i : i + 1], cache, i, mask, positions
        )
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


def test_unknown_preset_and_override_are_input_errors():
    with pytest.raises(InputError, match="preset='gpt-9'"):
        get_preset("gpt-9")
    # Before, a misspelt override reached Keras as a TypeError.
    with pytest.raises(InputError, match="Received: hidden_size=8") as info:
        get_preset("tiny", hidden_size=8)
    assert "hidden_dim" in str(info.value)
    with pytest.raises(InputError, match="Received: hidden_size=8"):
        Backbone.from_preset("tiny", hidden_size=8)
