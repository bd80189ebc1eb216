import json
import os

import keras
import numpy as np
import pytest

from tflm.layers import lora

IN, UNITS, RANK = 4, 6, 2
BLOCKS = [["query", 0, 2], ["value", 4, 2]]


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(3, IN)).astype("float32")


def _layer(**kwargs):
    layer = lora.LoRADense(UNITS, rank=RANK, blocks=BLOCKS, **kwargs)
    layer.build((None, IN))
    return layer


def _randomize(variables, seed=1):
    rng = np.random.default_rng(seed)
    for v in variables:
        v.assign(rng.normal(size=v.shape).astype("float32"))


def test_output_shape_and_only_adapters_trainable():
    layer = _layer()
    assert layer(np.zeros((2, 5, IN), "float32")).shape == (2, 5, UNITS)
    names = sorted(v.name for v in layer.trainable_variables)
    assert names == [
        "query_lora_a",
        "query_lora_b",
        "value_lora_a",
        "value_lora_b",
    ]
    assert layer.lora_a[0].shape == (IN, RANK)
    assert layer.lora_b[1].shape == (RANK, 2)


def test_fresh_layer_computes_the_dense_and_blocks_touch_their_columns():
    layer = _layer()
    x = _x()
    base = x @ layer.kernel.numpy() + layer.bias.numpy()
    # B starts at zero: exactly the frozen Dense.
    np.testing.assert_array_equal(layer(x).numpy(), base)
    # A query-only update changes only the query columns [0, 2).
    _randomize([layer.lora_b[0]])
    delta = layer(x).numpy() - base
    assert np.abs(delta[:, :2]).min() > 0
    np.testing.assert_array_equal(delta[:, 2:], 0.0)
    # The value adapter writes [4, 6) only.
    layer.lora_b[0].assign(np.zeros((RANK, 2), "float32"))
    _randomize([layer.lora_b[1]])
    delta = layer(x).numpy() - base
    np.testing.assert_array_equal(delta[:, :4], 0.0)
    assert np.abs(delta[:, 4:]).min() > 0


def test_alpha_scales_the_update_and_merged_kernel_matches():
    layer = _layer(alpha=6.0)
    assert layer.scale == 3.0
    _randomize(layer.trainable_variables)
    x = _x()
    a, b = layer.lora_a, layer.lora_b
    delta = np.zeros((IN, UNITS), "float32")
    delta[:, 0:2] = a[0].numpy() @ b[0].numpy()
    delta[:, 4:6] = a[1].numpy() @ b[1].numpy()
    expected = x @ (layer.kernel.numpy() + 3.0 * delta) + layer.bias.numpy()
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5)
    merged = layer.merged_kernel().numpy()
    np.testing.assert_allclose(
        x @ merged + layer.bias.numpy(), expected, atol=1e-5
    )


def test_config_round_trip():
    layer = lora.LoRADense(
        UNITS, rank=RANK, blocks=BLOCKS, alpha=4.0, use_bias=False, name="qkv"
    )
    restored = lora.LoRADense.from_config(layer.get_config())
    assert json.dumps(restored.get_config(), sort_keys=True) == json.dumps(
        layer.get_config(), sort_keys=True
    )
    assert restored.blocks == BLOCKS and restored.alpha == 4.0


class _Holder(keras.layers.Layer):
    """Reaches its projection by attribute name, as tflm's blocks do (a
    model's layer list is keyed by class name instead)."""

    def __init__(self, projection):
        super().__init__()
        self.projection = projection

    def call(self, x):
        return self.projection(x)


def _held(layer):
    return keras.Sequential([keras.Input((IN,)), _Holder(layer)])


def test_weights_file_holds_the_base_only_and_loads_into_a_dense(tmp_path):
    layer = _layer()
    _randomize(layer.weights)
    path = os.path.join(tmp_path, "base.weights.h5")
    _held(layer).save_weights(path)
    plain = _held(keras.layers.Dense(UNITS))
    plain.load_weights(path)
    np.testing.assert_array_equal(
        plain.layers[0].projection.kernel.numpy(), layer.kernel.numpy()
    )
    # And back into a LoRA layer, whose adapters are left alone.
    other = _held(_layer())
    before = [v.numpy() for v in other.layers[0].projection.trainable_variables]
    other.load_weights(path)
    np.testing.assert_array_equal(
        other.layers[0].projection.kernel.numpy(), layer.kernel.numpy()
    )
    after = [v.numpy() for v in other.layers[0].projection.trainable_variables]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


def test_keras_file_round_trip_keeps_the_adapters(tmp_path):
    layer = _layer()
    _randomize(layer.weights)
    model = keras.Sequential([keras.Input((IN,)), layer])
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    x = _x()
    np.testing.assert_allclose(restored(x), model(x), atol=1e-6)


def test_fit_step_trains_only_the_adapters():
    layer = _layer()
    model = keras.Sequential([keras.Input((IN,)), layer])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    kernel = layer.kernel.numpy()
    history = model.fit(_x(), _x(2)[:, :2].repeat(3, 1), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    assert np.abs(layer.lora_b[0].numpy()).max() > 0
    slots = [v for v in model.optimizer.variables if v.shape != ()]
    assert len(slots) == 2 * len(layer.trainable_variables)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rank=0),
        dict(rank=2, blocks=[["q", 0, 4], ["v", 3, 2]]),  # overlap
        dict(rank=2, blocks=[["q", 4, 4]]),  # past the units
        dict(rank=2, activation="relu"),
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        lora.LoRADense(UNITS, **kwargs)
