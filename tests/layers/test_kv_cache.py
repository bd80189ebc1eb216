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


@pytest.mark.parametrize("length", [1, 3])
def test_in_place_write_equals_the_scatter_with_an_open_batch(length):
    rng = np.random.default_rng(length)
    cache = rng.normal(size=(2, 3, 2, 8, 4)).astype("float32")
    key = rng.normal(size=(3, 2, length, 4)).astype("float32")
    value = rng.normal(size=(3, 2, length, 4)).astype("float32")
    spec = [
        tf.TensorSpec([2, None, 2, 8, 4]),
        tf.TensorSpec([None, 2, length, 4]),
        tf.TensorSpec([None, 2, length, 4]),
        tf.TensorSpec([], tf.int32),
    ]

    def writer(in_place):
        @tf.function(input_signature=spec, autograph=False)
        def write(cache, key, value, index):
            cache = kv_cache.owned_copy([cache])[0]
            if not in_place:
                return kv_cache.update(cache, key, value, index)
            with kv_cache.writes_in_place():
                return kv_cache.update(cache, key, value, index)

        return write

    for index in (0, 5):
        expected = _expected(cache, key, value, index)
        for in_place in (True, False):
            out = writer(in_place)(cache, key, value, index).numpy()
            np.testing.assert_array_equal(out, expected)


def test_writes_in_place_is_scoped():
    assert not kv_cache.in_place()
    with kv_cache.writes_in_place():
        assert kv_cache.in_place()
        with kv_cache.writes_in_place():
            assert kv_cache.in_place()
        assert kv_cache.in_place()
    assert not kv_cache.in_place()
