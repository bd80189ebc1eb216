import json

import keras
import numpy as np
import pytest

from tflm import layers


def _config_json(layer):
    return json.dumps(layer.get_config(), sort_keys=True)


def test_output_shape_and_lookup():
    layer = layers.PositionEmbedding(max_sequence_length=8, hidden_dim=4)
    ids = np.array([[0, 1, 2, 7, 7], [3, 3, 0, 1, 5]], "int32")
    out = layer(ids)
    assert out.shape == (2, 5, 4)
    table = keras.ops.convert_to_numpy(layer.embeddings)
    assert table.shape == (8, 4)
    np.testing.assert_array_equal(out, table[ids])


def test_config_round_trip():
    layer = layers.PositionEmbedding(
        8, 4, initializer=keras.initializers.RandomNormal(stddev=0.01)
    )
    restored = layers.PositionEmbedding.from_config(layer.get_config())
    assert _config_json(restored) == _config_json(layer)
    assert restored.max_sequence_length == 8 and restored.hidden_dim == 4


def _model():
    ids = keras.Input((8,), dtype="int32")
    x = layers.PositionEmbedding(8, 4, name="position_embedding")(ids)
    return keras.Model(ids, keras.layers.Dense(2)(x))


def test_keras_save_and_load(tmp_path):
    model = _model()
    ids = np.array([[0, 1, 2, 3, 4, 5, 6, 7]], "int32")
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored(ids), model(ids))


def test_fit_step_finite_loss():
    model = _model()
    model.compile(optimizer="adam", loss="mse", run_eagerly=True)
    ids = np.tile(np.arange(8, dtype="int32"), (4, 1))
    history = model.fit(ids, np.ones((4, 8, 2)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_sequence_longer_than_context_raises():
    layer = layers.PositionEmbedding(max_sequence_length=8, hidden_dim=4)
    with pytest.raises(ValueError, match="sequence length=9") as info:
        layer(np.zeros((1, 9), "int32"))
    assert "max_sequence_length=8" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(max_sequence_length=0, hidden_dim=4), "max_sequence_length=0"),
        (dict(max_sequence_length=8, hidden_dim=0), "hidden_dim=0"),
        (dict(max_sequence_length=-1, hidden_dim=4), "max_sequence_length=-1"),
    ],
)
def test_non_positive_sizes_raise(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        layers.PositionEmbedding(**kwargs)
