import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm import layers
from tflm.layers import kv_cache

B, T, D = 2, 8, 8

# (num_heads, num_key_value_heads, hidden): MHA, MQA, grouped-query.
HEADS = [(2, 2, 8), (2, 1, 8), (4, 2, 16)]
HEAD_IDS = ["mha", "mqa", "gqa"]


def _x(hidden=D, length=T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, length, hidden)).astype("float32")


def _config_json(layer):
    return json.dumps(layer.get_config(), sort_keys=True)


def _zeros_cache(layer, hidden, length=T):
    head_dim = hidden // layer.num_heads
    shape = (2, B, layer.num_key_value_heads, length, head_dim)
    return np.zeros(shape, "float32")


@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("fused_qkv", [True, False])
def test_output_shape(heads, fused_qkv):
    num_heads, kv_heads, hidden = heads
    layer = layers.CausalSelfAttention(
        num_heads, num_key_value_heads=kv_heads, fused_qkv=fused_qkv
    )
    assert layer(_x(hidden)).shape == (B, T, hidden)
    head_dim = hidden // num_heads
    kv_width = hidden + 2 * kv_heads * head_dim
    if fused_qkv:
        assert layer.query_key_value.kernel.shape == (hidden, kv_width)
    else:
        assert layer.key.kernel.shape == (hidden, kv_heads * head_dim)


def test_output_shape_with_cache():
    layer = layers.CausalSelfAttention(2, num_key_value_heads=1)
    cache = _zeros_cache(layer, D)
    out, new_cache = layer(_x()[:, :3], cache=cache, cache_index=0)
    assert out.shape == (B, 3, D)
    assert new_cache.shape == cache.shape


def test_config_round_trip():
    layer = layers.CausalSelfAttention(
        num_heads=4,
        num_key_value_heads=2,
        use_bias=False,
        fused_qkv=False,
        use_rotary=True,
        rope_max_wavelength=500.0,
        dropout=0.1,
        name="attention",
    )
    restored = layers.CausalSelfAttention.from_config(layer.get_config())
    assert _config_json(restored) == _config_json(layer)
    assert restored.num_key_value_heads == 2 and restored.use_rotary


def _sequential():
    return keras.Sequential(
        [keras.Input((T, D)), layers.CausalSelfAttention(num_heads=2)]
    )


def _functional():
    x = keras.Input((None, D))
    h = layers.CausalSelfAttention(2, num_key_value_heads=1, use_rotary=True)(x)
    return keras.Model(x, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("make_model", [_sequential, _functional])
def test_keras_save_and_load(make_model, tmp_path):
    model = make_model()
    x = _x()
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored(x), model(x))


def test_fit_step_finite_loss():
    model = _functional()
    model.compile(optimizer="adam", loss="mse", run_eagerly=True)
    history = model.fit(_x(), np.ones((B, T, 3)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("use_rotary", [False, True])
def test_causality(use_rotary):
    layer = layers.CausalSelfAttention(2, use_rotary=use_rotary)
    x = _x()
    t = 4
    changed = x.copy()
    changed[:, t] += 1.0
    before, after = np.asarray(layer(x)), np.asarray(layer(changed))
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert (np.abs(before[:, t:] - after[:, t:]).max(axis=-1) > 1e-6).all()


def test_right_padding_does_not_change_real_positions():
    layer = layers.CausalSelfAttention(2)
    padding_mask = np.array([[1] * 8, [1] * 5 + [0] * 3], "int32")
    x = _x()
    changed = x.copy()
    changed[1, 5:] = 10.0
    out = np.asarray(layer(x, padding_mask=padding_mask))
    out_changed = np.asarray(layer(changed, padding_mask=padding_mask))
    np.testing.assert_array_equal(out[:, :5], out_changed[:, :5])
    np.testing.assert_array_equal(out[0], out_changed[0])


def test_padded_keys_are_ignored_in_middle_rows():
    # Padded keys inside the sequence must get zero attention weight.
    layer = layers.CausalSelfAttention(2)
    x = _x()
    mask = np.ones((B, T), "int32")
    mask[:, 2] = 0
    changed = x.copy()
    changed[:, 2] = -5.0
    out = np.asarray(layer(x, padding_mask=mask))
    out_changed = np.asarray(layer(changed, padding_mask=mask))
    keep = [i for i in range(T) if i != 2]
    np.testing.assert_allclose(out[:, keep], out_changed[:, keep], atol=1e-6)


def _decode(layer, x, prefill=0):
    cache = _zeros_cache(layer, x.shape[-1], x.shape[1])
    outs = []
    if prefill:
        out, cache = layer(x[:, :prefill], cache=cache, cache_index=0)
        outs.append(out)
    for i in range(prefill, x.shape[1]):
        out, cache = layer(x[:, i : i + 1], cache=cache, cache_index=i)
        outs.append(out)
    return np.concatenate(outs, axis=1), np.asarray(cache)


@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("fused_qkv", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("use_rotary", [False, True], ids=["abs", "rope"])
def test_cached_decoding_matches_full_pass(heads, fused_qkv, use_rotary):
    num_heads, kv_heads, hidden = heads
    layer = layers.CausalSelfAttention(
        num_heads,
        num_key_value_heads=kv_heads,
        fused_qkv=fused_qkv,
        use_rotary=use_rotary,
    )
    x = _x(hidden)
    full = np.asarray(layer(x))
    stepped, cache = _decode(layer, x)
    np.testing.assert_allclose(stepped, full, atol=1e-5)
    _, prefilled_cache = _decode(layer, x, prefill=T)
    np.testing.assert_allclose(cache, prefilled_cache, atol=1e-6)


@pytest.mark.parametrize("use_rotary", [False, True])
def test_prefill_then_steps_matches_full_pass(use_rotary):
    layer = layers.CausalSelfAttention(
        4, num_key_value_heads=2, use_rotary=use_rotary
    )
    x = _x(16)
    full = np.asarray(layer(x))
    stepped, _ = _decode(layer, x, prefill=5)
    np.testing.assert_allclose(stepped, full, atol=1e-5)


def test_cache_left_padding_with_position_ids():
    layer = layers.CausalSelfAttention(
        2, num_key_value_heads=1, use_rotary=True
    )
    x = _x()
    alone = np.asarray(layer(x[1:, 3:]))
    padded = x.copy()
    padded[1, :3] = 7.0  # left padding of row 1
    mask = np.array([[1] * 8, [0] * 3 + [1] * 5], "int32")
    position_ids = np.array([list(range(8)), [0] * 3 + list(range(5))])
    cache = _zeros_cache(layer, D)
    out, _ = layer(
        padded,
        padding_mask=mask,
        cache=cache,
        cache_index=0,
        position_ids=position_ids,
    )
    np.testing.assert_allclose(np.asarray(out)[1, 3:], alone[0], atol=1e-5)


@pytest.mark.parametrize("index", [0, 3, 5])
def test_update_cache_writes_only_target_slots(index):
    rng = np.random.default_rng(index)
    cache = rng.normal(size=(2, 2, 3, 8, 4)).astype("float32")
    key = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    value = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    out = np.asarray(kv_cache.update(cache, key, value, index))
    expected = cache.copy()
    expected[0, :, :, index : index + 3] = key
    expected[1, :, :, index : index + 3] = value
    np.testing.assert_array_equal(out, expected)
    untouched = np.ones(8, bool)
    untouched[index : index + 3] = False
    np.testing.assert_array_equal(
        out[:, :, :, untouched], cache[:, :, :, untouched]
    )


def test_update_cache_tensor_index_and_dtype():
    cache = keras.ops.zeros((2, 1, 1, 4, 2), "bfloat16")
    key = np.ones((1, 1, 1, 2), "float32")
    index = keras.ops.convert_to_tensor(2, "int32")
    out = kv_cache.update(cache, key, 2 * key, index)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    out = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    np.testing.assert_array_equal(out[0, 0, 0, :, 0], [0, 0, 1, 0])
    np.testing.assert_array_equal(out[1, 0, 0, :, 0], [0, 0, 2, 0])


def test_hidden_not_divisible_by_heads_raises():
    layer = layers.CausalSelfAttention(num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3"):
        layer(_x())


@pytest.mark.parametrize(
    "num_heads, kv_heads, expected",
    [
        (4, 3, "num_key_value_heads=3"),
        (2, 4, "num_key_value_heads=4"),
        (4, -2, "num_key_value_heads=-2"),
        (4, 0, "num_key_value_heads=0"),
        (0, None, "num_heads=0"),
    ],
)
def test_bad_head_counts_raise(num_heads, kv_heads, expected):
    with pytest.raises(ValueError, match=expected):
        layers.CausalSelfAttention(num_heads, num_key_value_heads=kv_heads)


def test_bad_dropout_raises():
    with pytest.raises(ValueError, match="dropout=1.5"):
        layers.CausalSelfAttention(2, dropout=1.5)


def test_odd_rotary_head_dim_raises():
    layer = layers.CausalSelfAttention(num_heads=2, use_rotary=True)
    with pytest.raises(ValueError, match="head_dim=3"):
        layer(np.zeros((1, 4, 6), "float32"))


def test_mixed_precision_computes_in_bfloat16():
    layer = layers.CausalSelfAttention(2, dtype="mixed_bfloat16")
    out = layer(_x())
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.query_key_value.kernel.dtype == "float32"
    assert np.isfinite(
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    ).all()


def _score_matmul_dtypes(layer, x, training):
    """The dtypes of the batched matmuls in a traced call of `layer`."""
    fn = tf.function(lambda x: layer(x, training=training), autograph=False)
    graph = fn.get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph
    return [
        op.get_attr("T").name
        for op in graph.get_operations()
        if op.type == "BatchMatMulV2"
    ]


@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_mixed_precision_training_scores_are_a_bfloat16_product(heads):
    num_heads, kv_heads, hidden = heads
    layer = layers.CausalSelfAttention(
        num_heads,
        kv_heads,
        # Order-1 scores, so that softmax is far from uniform.
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.5),
        dtype="mixed_bfloat16",
    )
    x = tf.constant(_x(hidden))
    trained = layer(x, training=True)
    inferred = layer(x, training=False)
    # Training multiplies q·kᵀ (and probs·v) in bfloat16; inference keeps
    # the scores a float32 product.
    assert _score_matmul_dtypes(layer, x, True) == ["bfloat16", "bfloat16"]
    assert _score_matmul_dtypes(layer, x, False) == ["float32", "bfloat16"]
    # No dropout: the two differ only by the scores' rounding.
    a, b = (
        keras.ops.convert_to_numpy(tf.cast(t, tf.float32))
        for t in (trained, inferred)
    )
    assert np.abs(b).max() > 0.1
    np.testing.assert_allclose(a, b, atol=0.02 * np.abs(b).max())


def test_float32_training_scores_stay_float32():
    layer = layers.CausalSelfAttention(2)
    x = tf.constant(_x())
    assert _score_matmul_dtypes(layer, x, True) == ["float32", "float32"]


@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_an_xla_decode_step_does_not_transpose_the_cache(heads):
    # XLA materialized kᵀ (the whole cache's keys, copied) at every step
    # when the scores were `q @ swapaxes(k)`: in bench-small's decode loop,
    # and here (a smaller loop) with one kv head.
    num_heads, kv_heads, hidden = heads
    layer = layers.CausalSelfAttention(num_heads, kv_heads)
    x = tf.constant(_x(hidden, length=1))
    cache = tf.constant(_zeros_cache(layer, hidden, length=256))
    layer(x, cache=cache, cache_index=3)

    def step(x, cache):  # a decode loop carries its cache
        def body(i, x, cache):
            out, cache = layer(x, cache=cache, cache_index=i)
            return i + 1, out, cache

        loop = tf.while_loop(lambda i, *_: i < 5, body, (3, x, cache))
        return loop[1:]

    compiled = tf.function(step, jit_compile=True, autograph=False)
    hlo = compiled.experimental_get_compiler_ir(x, cache)(stage="optimized_hlo")
    assert "dot(" in hlo or "dot_" in hlo
    assert 'op_type="Transpose"' not in hlo
    plain = tf.function(step, autograph=False)
    np.testing.assert_allclose(
        compiled(x, cache)[0], plain(x, cache)[0], rtol=1e-5, atol=1e-6
    )
