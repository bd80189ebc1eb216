import json

import keras
import numpy as np
import pytest

from tflm import layers

B, T, D = 2, 8, 8


def _x(hidden=D, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, hidden)).astype("float32")


def _config_json(layer):
    return json.dumps(layer.get_config(), sort_keys=True)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_output_shape_and_sublayer_names(norm, activation):
    block = layers.DecoderBlock(
        num_heads=2, intermediate_dim=16, norm=norm, activation=activation
    )
    assert block(_x()).shape == (B, T, D)
    # Sub-layer names are checkpoint keys.
    names = {v.path.split("/")[1] for v in block.weights}
    assert names == {
        "attention_norm",
        "attention",
        "mlp_norm",
        "mlp_in",
        "mlp_out",
    }
    width = 32 if activation == "swiglu" else 16
    assert block.mlp_in.kernel.shape == (D, width)
    assert block.mlp_out.kernel.shape == (16, D)


def test_config_round_trip():
    block = layers.DecoderBlock(
        num_heads=4,
        intermediate_dim=16,
        num_key_value_heads=2,
        norm="rmsnorm",
        activation="swiglu",
        use_bias=False,
        fused_qkv=False,
        use_rotary=True,
        rope_max_wavelength=500.0,
        dropout=0.1,
        layer_norm_epsilon=1e-6,
        name="decoder_0",
    )
    restored = layers.DecoderBlock.from_config(block.get_config())
    assert _config_json(restored) == _config_json(block)
    assert restored.norm == "rmsnorm" and restored.num_key_value_heads == 2


def _model():
    x = keras.Input((None, D))
    h = layers.DecoderBlock(
        num_heads=2, intermediate_dim=16, norm="rmsnorm", activation="swiglu"
    )(x)
    return keras.Model(x, keras.layers.Dense(3)(h))


def test_keras_save_and_load(tmp_path):
    model = _model()
    x = _x()
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored(x), model(x))


def test_keras_save_and_load_sequential(tmp_path):
    model = keras.Sequential(
        [keras.Input((T, D)), layers.DecoderBlock(2, intermediate_dim=16)]
    )
    x = _x()
    path = str(tmp_path / "model.keras")
    model.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path)(x), model(x))


def test_fit_step_finite_loss():
    model = _model()
    model.compile(optimizer="adam", loss="mse", run_eagerly=True)
    history = model.fit(_x(), np.ones((B, T, 3)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("use_rotary", [False, True])
def test_causality(use_rotary):
    block = layers.DecoderBlock(2, intermediate_dim=16, use_rotary=use_rotary)
    x = _x()
    t = 3
    changed = x.copy()
    changed[:, t] = _x(seed=1)[:, t]
    before, after = np.asarray(block(x)), np.asarray(block(changed))
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert (np.abs(before[:, t:] - after[:, t:]).max(axis=-1) > 1e-6).all()


def test_right_padding_does_not_change_real_positions():
    block = layers.DecoderBlock(2, intermediate_dim=16)
    mask = np.array([[1] * 6 + [0] * 2, [1] * 4 + [0] * 4], "int32")
    x = _x()
    changed = x.copy()
    changed[0, 6:] = 3.0
    changed[1, 4:] = -3.0
    out = np.asarray(block(x, padding_mask=mask))
    out_changed = np.asarray(block(changed, padding_mask=mask))
    np.testing.assert_array_equal(out[0, :6], out_changed[0, :6])
    np.testing.assert_array_equal(out[1, :4], out_changed[1, :4])


CASES = {
    "gpt2": dict(),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(activation="swiglu"),
    "rotary": dict(use_rotary=True),
    "mqa": dict(num_key_value_heads=1),
    "unfused": dict(fused_qkv=False),
    "llama_gqa": dict(
        num_heads=4,
        num_key_value_heads=2,
        norm="rmsnorm",
        activation="swiglu",
        use_rotary=True,
        use_bias=False,
    ),
    "gqa_unfused": dict(num_heads=4, num_key_value_heads=2, fused_qkv=False),
}


def _decode(block, x, prefill):
    num_heads = block.num_heads
    head_dim = x.shape[-1] // num_heads
    shape = (2, B, block.num_key_value_heads, T, head_dim)
    cache = np.zeros(shape, "float32")
    outs = []
    if prefill:
        out, cache = block(x[:, :prefill], cache=cache, cache_index=0)
        outs.append(out)
    for i in range(prefill, T):
        out, cache = block(x[:, i : i + 1], cache=cache, cache_index=i)
        outs.append(out)
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("prefill", [0, 3], ids=["steps", "prefill"])
@pytest.mark.parametrize("case", list(CASES))
def test_cached_decoding_matches_full_pass(case, prefill):
    kwargs = {"num_heads": 2, "intermediate_dim": 16, **CASES[case]}
    hidden = 16 if kwargs["num_heads"] == 4 else D
    block = layers.DecoderBlock(**kwargs)
    x = _x(hidden)
    full = np.asarray(block(x))
    np.testing.assert_allclose(_decode(block, x, prefill), full, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(norm="batchnorm"), "norm='batchnorm'"),
        (dict(activation="relu"), "activation='relu'"),
        (dict(intermediate_dim=0), "intermediate_dim=0"),
        (dict(num_key_value_heads=3), "num_key_value_heads=3"),
        (dict(num_heads=0), "num_heads=0"),
    ],
)
def test_bad_arguments_raise(kwargs, expected):
    kwargs = {"num_heads": 2, "intermediate_dim": 16, **kwargs}
    with pytest.raises(ValueError, match=expected):
        layers.DecoderBlock(**kwargs)


def test_hidden_not_divisible_by_heads_raises():
    block = layers.DecoderBlock(num_heads=3, intermediate_dim=16)
    with pytest.raises(ValueError, match="num_heads=3"):
        block(_x())
