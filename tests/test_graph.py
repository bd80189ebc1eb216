"""`tflm.graph.function`: `tf.function` without AutoGraph."""

import numpy as np
import pytest
import tensorflow as tf

from tflm import graph


def _clip(x):
    if x > 0:  # a Python `if` on a tensor
        return x
    return -x


def test_it_traces_and_runs_like_tf_function():
    calls = []

    @graph.function
    def f(x):
        calls.append(1)
        return tf.while_loop(
            lambda i, y: i < 3, lambda i, y: (i + 1, y * 2), (0, x)
        )[1]

    assert float(f(tf.constant(1.5))) == 12.0
    assert float(f(tf.constant(2.0))) == 16.0
    assert len(calls) == 1  # one trace for both calls


def test_a_python_if_on_a_tensor_fails_at_trace_time():
    # AutoGraph would convert it; without AutoGraph it is an error.
    assert float(tf.function(_clip)(tf.constant(-2.0))) == 2.0
    with pytest.raises(TypeError, match="not allowed"):
        graph.function(_clip)(tf.constant(-2.0))


def test_it_takes_tf_function_arguments():
    spec = [tf.TensorSpec([None], tf.float32)]
    f = graph.function(lambda x: tf.reduce_sum(x), input_signature=spec)
    assert float(f(tf.constant([1.0, 2.0]))) == 3.0
    assert float(f(tf.constant([1.0, 2.0, 3.0]))) == 6.0
    with pytest.raises(TypeError):
        f(tf.constant([[1.0]]))
    jit = graph.function(lambda x: x * 2, jit_compile=True)
    np.testing.assert_array_equal(jit(tf.constant([1.0, 2.0])), [2.0, 4.0])
    compiled = jit.get_concrete_function(tf.constant([1.0])).function_def
    assert compiled.attr["_XlaMustCompile"].b
    plain = graph.function(lambda x: x * 2)
    plain = plain.get_concrete_function(tf.constant([1.0])).function_def
    assert "_XlaMustCompile" not in plain.attr
