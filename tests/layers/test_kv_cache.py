import numpy as np
import pytest
import tensorflow as tf

from tflm.layers import kv_cache


def _expected(cache, key, value, index):
    out = cache.copy()
    length = key.shape[2]
    out[0, :, :, index : index + length] = key
    out[1, :, :, index : index + length] = value
    return out


def _inputs(length):
    rng = np.random.default_rng(length)
    cache = rng.normal(size=(2, 3, 2, 8, 4)).astype("float32")
    key = rng.normal(size=(3, 2, length, 4)).astype("float32")
    value = rng.normal(size=(3, 2, length, 4)).astype("float32")
    return cache, key, value


def _spec(length):
    return [
        tf.TensorSpec([2, None, 2, 8, 4]),
        tf.TensorSpec([None, 2, length, 4]),
        tf.TensorSpec([None, 2, length, 4]),
        tf.TensorSpec([], tf.int32),
    ]


@pytest.mark.parametrize("length", [1, 3])
def test_in_place_write_equals_the_scatter_with_an_open_batch(length):
    cache, key, value = _inputs(length)

    def writer(in_place):
        @tf.function(input_signature=_spec(length), autograph=False)
        def write(cache, key, value, index):
            cache = kv_cache.owned_copy([cache])[0]
            return kv_cache.update(cache, key, value, index, in_place)

        return write

    for index in (0, 5):
        expected = _expected(cache, key, value, index)
        for in_place in (True, False):
            out = writer(in_place)(cache, key, value, index).numpy()
            np.testing.assert_array_equal(out, expected)


def test_in_place_write_is_one_inplace_update_and_no_scatter():
    @tf.function(input_signature=_spec(1), autograph=False)
    def write(cache, key, value, index):
        cache = kv_cache.owned_copy([cache])[0]
        return kv_cache.update(cache, key, value, index, in_place=True)

    ops = [
        n.op for n in write.get_concrete_function().graph.as_graph_def().node
    ]
    assert ops.count("InplaceUpdate") == 1 and ops.count("DeepCopy") == 1
    assert not [op for op in ops if "Scatter" in op]


def test_owned_copy_keeps_the_input():
    cache, key, value = _inputs(1)

    @tf.function(input_signature=_spec(1), autograph=False)
    def write(cache, key, value, index):
        owned = kv_cache.owned_copy([cache])[0]
        out = kv_cache.update(owned, key, value, index, in_place=True)
        return cache, out

    given = tf.constant(cache)
    kept, out = write(given, key, value, 2)
    np.testing.assert_array_equal(kept, cache)
    np.testing.assert_array_equal(given, cache)
    np.testing.assert_array_equal(out, _expected(cache, key, value, 2))
