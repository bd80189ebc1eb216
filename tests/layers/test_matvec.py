"""`tflm.layers.matvec`: one-row narrowing projections multiply transposed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm import graph
from tflm.layers import matvec
from tflm.models import CausalLM
from tflm.models import weights


def _dense(fan_in, fan_out, **kwargs):
    layer = keras.layers.Dense(fan_out, **kwargs)
    layer.build((None, fan_in))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    return layer


def _in_loop(layer, x):
    """`project(layer, x)` in a hoisted loop; the output and the body's
    `MatMul` ops (`transpose_b` of each) and its count of the reads and
    transposes that belong before the loop."""

    init = tf.zeros_like(layer(x))

    @graph.function
    def run(x):
        def body(i, y):
            return i + 1, matvec.project(layer, x)

        with matvec.narrowing_transposed(), graph.reads_hoisted():
            return tf.while_loop(lambda i, y: i < 2, body, (0, init))[1]

    graph_def = run.get_concrete_function(x).graph.as_graph_def()
    (body,) = [
        f.node_def
        for f in graph_def.library.function
        if "while_body" in f.signature.name
    ]
    matmuls = [n.attr["transpose_b"].b for n in body if n.op == "MatMul"]
    reads = sum(n.op in ("ReadVariableOp", "Transpose") for n in body)
    return run(x), matmuls, reads


@pytest.mark.parametrize("use_bias", [True, False])
def test_a_narrowing_one_row_product_multiplies_by_a_hoisted_transpose(
    use_bias,
):
    layer = _dense(12, 4, use_bias=use_bias)
    x = tf.constant(np.random.default_rng(1).normal(size=(1, 12)), tf.float32)
    y, matmuls, reads = _in_loop(layer, x)
    np.testing.assert_allclose(y, layer(x), rtol=1e-5, atol=1e-6)
    assert matmuls == [True]
    assert reads == 0  # kernel read and transposed, bias read, before


@pytest.mark.parametrize(
    "fan_in, fan_out, rows, kwargs",
    [
        (4, 12, 1, {}),  # widening
        (12, 4, 2, {}),  # two rows
        (12, 4, 1, {"activation": "relu"}),
    ],
)
def test_other_products_keep_the_stored_layout(fan_in, fan_out, rows, kwargs):
    layer = _dense(fan_in, fan_out, **kwargs)
    x = tf.ones((rows, fan_in))
    y, matmuls, _ = _in_loop(layer, x)
    np.testing.assert_array_equal(y, layer(x))
    assert matmuls == [False]


def test_outside_the_mode_project_is_the_layer():
    layer = _dense(12, 4)
    x = tf.ones((1, 12))

    @graph.function
    def run(x):
        return matvec.project(layer, x)

    ops = run.get_concrete_function(x).graph.as_graph_def().node
    assert [n.attr["transpose_b"].b for n in ops if n.op == "MatMul"] == [False]
    np.testing.assert_array_equal(run(x), layer(x))


def test_bfloat16_weights_with_a_float32_bias_add_it_as_dense_does():
    model = weights.converted(CausalLM.from_preset("tiny"), "bfloat16")
    layer = model.backbone.blocks[0].mlp_out
    assert layer.kernel.dtype == "bfloat16" and layer.bias.dtype == "float32"
    x = tf.ones((1, layer.kernel.shape[0]), tf.bfloat16)
    y, matmuls, _ = _in_loop(layer, x)
    expected = layer(x)
    assert y.dtype == expected.dtype == tf.float32
    np.testing.assert_allclose(y, expected, rtol=1e-2)
    assert matmuls == [True]


def _mlp_out_matmuls(model, batch):
    ids = tf.ragged.constant([[3, 4, 5]] * batch, tf.int32)
    tokens = model.generate(ids, max_new_tokens=5, jit_compile=True)
    generator = model.generator(True)
    (concrete,) = generator._run._list_all_concrete_functions()[-1:]
    graph_def = concrete.graph.as_graph_def()
    body = [
        n
        for f in graph_def.library.function
        if "while_body" in f.signature.name
        for n in f.node_def
    ]
    transposed = sum(n.op == "MatMul" and n.attr["transpose_b"].b for n in body)
    return tokens, transposed


def test_xla_generation_at_batch_1_uses_it_with_the_same_tokens():
    model = CausalLM.from_preset("tiny", vocabulary_size=32)
    ids = tf.ragged.constant([[3, 4, 5]], tf.int32)
    plain = model.generate(ids, max_new_tokens=5, jit_compile=False)
    tokens, transposed = _mlp_out_matmuls(model, 1)
    assert tokens == plain
    assert transposed == model.backbone.num_layers  # each block's mlp_out
    _, transposed = _mlp_out_matmuls(model, 2)
    assert transposed == 0
