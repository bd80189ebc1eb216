import json

import keras
import numpy as np
import pytest

from tflm.models import Backbone
from tflm.models import backbone as backbone_lib

B, T = 2, 8


def _inputs(seed=0, length=T):
    ids = np.random.default_rng(seed).integers(0, 32, (B, length))
    return {
        "token_ids": ids.astype("int32"),
        "padding_mask": np.ones((B, length), "int32"),
    }


def _config_json(model):
    return json.dumps(model.get_config(), sort_keys=True)


@pytest.mark.parametrize("position_embedding", ["learned", "rotary"])
def test_output_shape_and_layer_names(position_embedding):
    backbone = Backbone.from_preset(
        "tiny", position_embedding=position_embedding
    )
    assert backbone(_inputs()).shape == (B, T, 8)
    top = {v.path.split("/")[0] for v in backbone.weights}
    expected = {"token_embedding", "decoder_0", "decoder_1", "final_norm"}
    if position_embedding == "learned":
        expected.add("position_embedding")
    assert top == expected


def test_config_round_trip():
    backbone = Backbone.from_preset(
        "tiny",
        num_heads=4,
        num_key_value_heads=2,
        hidden_dim=16,
        norm="rmsnorm",
        activation="swiglu",
        position_embedding="rotary",
        use_bias=False,
        fused_qkv=False,
        tie_embeddings=False,
        dropout=0.1,
        layer_norm_epsilon=1e-6,
    )
    restored = Backbone.from_config(backbone.get_config())
    assert _config_json(restored) == _config_json(backbone)
    assert restored.get_config()["position_embedding"] == "rotary"
    assert len(restored.weights) == len(backbone.weights)


def test_config_round_trip_mixed_precision():
    backbone = Backbone.from_preset("tiny", dtype="mixed_bfloat16")
    restored = Backbone.from_config(backbone.get_config())
    assert _config_json(restored) == _config_json(backbone)
    policy = restored.blocks[0].dtype_policy
    assert policy.name == "mixed_bfloat16"


def test_init_cache_shape_and_dtype():
    backbone = Backbone.from_preset(
        "tiny", num_heads=4, num_key_value_heads=1, hidden_dim=16
    )
    cache = backbone.init_cache(3, cache_length=5)
    assert len(cache) == 2
    for layer_cache in cache:
        assert tuple(layer_cache.shape) == (2, 3, 1, 5, 4)
        assert keras.backend.standardize_dtype(layer_cache.dtype) == "float32"
        assert not np.any(keras.ops.convert_to_numpy(layer_cache))
    default = backbone.init_cache(1)
    assert tuple(default[0].shape) == (2, 1, 1, 16, 4)


def test_init_cache_uses_compute_dtype():
    backbone = Backbone.from_preset("tiny", dtype="mixed_bfloat16")
    cache = backbone.init_cache(1, 4)
    assert keras.backend.standardize_dtype(cache[0].dtype) == "bfloat16"


def test_call_with_cache_matches_full_pass():
    backbone = Backbone.from_preset("tiny")
    inputs = _inputs()
    full = np.asarray(backbone(inputs))
    cache = backbone.init_cache(B, T)
    mask = np.ones((B, T), "int32")
    positions = np.tile(np.arange(4, dtype="int32"), (B, 1))
    first, cache = backbone.call_with_cache(
        inputs["token_ids"][:, :4], cache, 0, mask, positions
    )
    second, _ = backbone.call_with_cache(
        inputs["token_ids"][:, 4:], cache, 4, mask, positions + 4
    )
    stepped = np.concatenate([first, second], axis=1)
    np.testing.assert_allclose(stepped, full, atol=1e-5)


def test_position_ids_from_mask_literal():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]
    np.testing.assert_array_equal(
        backbone_lib.position_ids_from_mask(mask), expected
    )


def test_sequence_longer_than_context_raises():
    backbone = Backbone.from_preset("tiny", max_sequence_length=8)
    with pytest.raises(ValueError, match="sequence length=9") as info:
        backbone(_inputs(length=9))
    assert "max_sequence_length=8" in str(info.value)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(hidden_dim=10, num_heads=4), "hidden_dim=10"),
        (dict(num_heads=4, num_key_value_heads=3), "num_key_value_heads=3"),
        (dict(num_heads=4, num_key_value_heads=-2), "num_key_value_heads=-2"),
        (dict(num_heads=4, num_key_value_heads=0), "num_key_value_heads=0"),
        (dict(norm="batchnorm"), "norm='batchnorm'"),
        (dict(activation="relu"), "activation='relu'"),
        (dict(position_embedding="alibi"), "position_embedding='alibi'"),
        (dict(vocabulary_size=0), "vocabulary_size=0"),
        (dict(num_layers=0), "num_layers=0"),
        (dict(num_heads=0), "num_heads=0"),
        (dict(hidden_dim=-8), "hidden_dim=-8"),
        (dict(intermediate_dim=0), "intermediate_dim=0"),
        (dict(max_sequence_length=0), "max_sequence_length=0"),
    ],
)
def test_bad_arguments_raise(overrides, expected):
    with pytest.raises(ValueError, match=expected):
        Backbone.from_preset("tiny", **overrides)


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="preset='gpt5'") as info:
        Backbone.from_preset("gpt5")
    assert "tiny" in str(info.value) and "gpt2-124m" in str(info.value)
