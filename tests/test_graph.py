"""`tflm.graph.reads_hoisted`: loop bodies read no variable."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm import graph


def _ops_by_function(concrete):
    """`{function name: [op types]}`: the outer graph under `""`."""
    graph_def = concrete.graph.as_graph_def()
    out = {"": [n.op for n in graph_def.node]}
    for function in graph_def.library.function:
        out[function.signature.name] = [n.op for n in function.node_def]
    return out


def _bodies(ops):
    return [types for name, types in ops.items() if "while_body" in name]


def _loop(layer, hoisted):
    @graph.function
    def run(x):
        def body(i, x):
            return i + 1, layer(x)

        scope = graph.reads_hoisted() if hoisted else contextlib.nullcontext()
        with scope:
            return tf.while_loop(lambda i, x: i < 3, body, (0, x))[1]

    return run


def test_a_loop_body_reads_no_variable_and_computes_the_same():
    layer = keras.layers.Dense(4, activation="tanh")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 4)), tf.float32)
    layer(x)
    plain, hoisted = _loop(layer, False), _loop(layer, True)
    np.testing.assert_array_equal(plain(x), hoisted(x))
    ops = _ops_by_function(hoisted.get_concrete_function(x))
    body = _bodies(ops)
    assert body and all("ReadVariableOp" not in b for b in body)
    # Each weight is read once, outside the loop.
    assert ops[""].count("ReadVariableOp") == 2
    plain_ops = _ops_by_function(plain.get_concrete_function(x))
    assert sum(b.count("ReadVariableOp") for b in _bodies(plain_ops)) == 2


def test_a_mixed_policy_casts_once_outside_the_loop():
    layer = keras.layers.Dense(4, dtype="mixed_bfloat16")
    x = tf.ones((1, 4), tf.bfloat16)
    layer(x)
    run = _loop(layer, True)
    assert run(x).dtype == tf.bfloat16
    ops = _ops_by_function(run.get_concrete_function(x))
    (body,) = _bodies(ops)
    # The float32 kernel and bias arrive in bfloat16, cast once outside.
    assert body.count("Cast") == 0
    assert ops[""].count("Cast") == 2
    plain = _ops_by_function(_loop(layer, False).get_concrete_function(x))
    assert _bodies(plain)[0].count("Cast") == 2


def test_an_assign_within_is_an_error_and_eager_is_untouched():
    v = keras.Variable(1.0)

    @graph.function
    def f():
        with graph.reads_hoisted():
            v.assign(5.0)
        return v.value

    with pytest.raises(ValueError, match="assigned while its reads"):
        f()
    with graph.reads_hoisted():  # eagerly: no scope
        v.assign(2.0)
    assert float(v.numpy()) == 2.0


def test_an_enclosing_stateless_scope_keeps_its_values():
    v = keras.Variable(1.0)

    @graph.function
    def f():
        with keras.StatelessScope(state_mapping=[(v, tf.constant(7.0))]):
            with graph.reads_hoisted():
                return tf.convert_to_tensor(v.value) + 0.0

    assert float(f()) == 7.0


def test_a_variable_used_twice_is_read_once():
    layer = keras.layers.Dense(4)
    x = tf.ones((1, 4))
    layer(x)

    @graph.function
    def f(x):
        with graph.reads_hoisted():
            return layer(layer(x))

    ops = _ops_by_function(f.get_concrete_function(x))
    assert ops[""].count("ReadVariableOp") == 2


def test_row_blocks_are_split_once_outside_the_loop():
    kernel = keras.Variable(np.arange(16.0, dtype="float32").reshape(4, 4))
    x = tf.ones((2, 4))

    def product(x):
        blocks = graph.row_blocks(kernel, 2)
        return tf.concat([x @ tf.transpose(b) for b in blocks], -1) * 1e-2

    plain, hoisted = _loop(product, False), _loop(product, True)
    expected = x
    for _ in range(3):
        expected = expected @ tf.transpose(kernel) * 1e-2
    np.testing.assert_array_equal(hoisted(x), plain(x))
    np.testing.assert_allclose(hoisted(x), expected, rtol=1e-6)
    ops = _ops_by_function(hoisted.get_concrete_function(x))
    assert all("SplitV" not in b for b in _bodies(ops))
    assert ops[""].count("SplitV") == 1
    plain_ops = _ops_by_function(plain.get_concrete_function(x))
    assert sum(b.count("SplitV") for b in _bodies(plain_ops)) == 1


def test_row_blocks_are_as_equal_as_can_be():
    kernel = keras.Variable(np.arange(14.0, dtype="float32").reshape(7, 2))
    blocks = graph.row_blocks(kernel, 3)
    assert [tuple(b.shape) for b in blocks] == [(3, 2), (2, 2), (2, 2)]
    np.testing.assert_array_equal(tf.concat(blocks, 0), kernel.numpy())


@pytest.mark.parametrize("parts", [0, 8, 2.0])
def test_row_blocks_refuse_a_bad_count(parts):
    kernel = keras.Variable(np.zeros((7, 2), "float32"))
    with pytest.raises(ValueError, match=f"Received: parts={parts!r}"):
        graph.row_blocks(kernel, parts)
