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


def _in_loop(layer, x, backend="xla"):
    """`project(layer, x)` in a hoisted loop; the output and the body's
    `MatMul` ops (`transpose_b` of each) and its count of the reads and
    transposes that belong before the loop."""

    init = tf.zeros_like(layer(x))

    @graph.function
    def run(x):
        def body(i, y):
            return i + 1, matvec.project(layer, x)

        with matvec.decode_layout(backend), graph.reads_hoisted():
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
    "fan_in, fan_out, rows, kwargs, backend",
    [
        (4, 12, 1, {}, "xla"),  # widening
        (4, 12, 3, {}, "graph"),
        (12, 4, 2, {}, "xla"),  # two rows
        (12, 4, 1, {"activation": "relu"}, "graph"),
    ],
)
def test_other_products_keep_the_stored_layout(
    fan_in, fan_out, rows, kwargs, backend
):
    layer = _dense(fan_in, fan_out, **kwargs)
    x = tf.ones((rows, fan_in))
    y, matmuls, _ = _in_loop(layer, x, backend)
    np.testing.assert_array_equal(y, layer(x))
    assert matmuls == [False]


def test_the_plain_graph_layout_transposes_at_any_number_of_rows():
    layer = _dense(12, 4)
    x = tf.constant(np.random.default_rng(2).normal(size=(3, 12)), tf.float32)
    y, matmuls, reads = _in_loop(layer, x, "graph")
    np.testing.assert_allclose(y, layer(x), rtol=1e-5, atol=1e-6)
    assert matmuls == [True] and reads == 0


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="Received: 'tpu'"):
        with matvec.decode_layout("tpu"):
            pass


@pytest.mark.parametrize("weights_type", [None, "bfloat16"])
def test_the_plain_graph_head_multiplies_by_a_hoisted_transposed_table(
    weights_type,
):
    model = CausalLM.from_preset("tiny")
    if weights_type:
        model = weights.converted(model, weights_type)
    embedding = model.backbone.token_embedding
    hidden = np.random.default_rng(3).normal(size=(2, embedding.output_dim))
    hidden = tf.constant(hidden * 30, tf.float32)
    expected = embedding(hidden, reverse=True)

    @graph.function
    def run(hidden):
        def body(i, y):
            return i + 1, matvec.head(embedding, hidden)

        with matvec.decode_layout("graph"), graph.reads_hoisted():
            init = tf.zeros_like(expected)
            return tf.while_loop(lambda i, y: i < 2, body, (0, init))[1]

    graph_def = run.get_concrete_function(hidden).graph.as_graph_def()
    body = [
        n
        for f in graph_def.library.function
        if "while_body" in f.signature.name
        for n in f.node_def
    ]
    assert [n.attr["transpose_b"].b for n in body if n.op == "MatMul"] == [
        False
    ]
    assert not [n for n in body if n.op in ("Transpose", "ReadVariableOp")]
    logits = run(hidden)
    assert logits.dtype == expected.dtype
    tol = 1e-4 if weights_type is None else 0.1
    assert float(tf.reduce_max(tf.abs(tf.cast(expected, tf.float32)))) > 1
    np.testing.assert_allclose(
        tf.cast(logits, tf.float32), tf.cast(expected, tf.float32), atol=tol
    )


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


def _mlp_out_matmuls(model, batch, jit=True):
    ids = tf.ragged.constant([[3, 4, 5]] * batch, tf.int32)
    tokens = model.generate(ids, max_new_tokens=5, jit_compile=jit)
    generator = model.generator(jit)
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


def test_plain_graph_generation_uses_it_at_any_batch_with_the_same_tokens():
    model = CausalLM.from_preset("tiny", vocabulary_size=32)
    ids = tf.ragged.constant([[3, 4, 5]] * 2, tf.int32)
    # XLA at batch 2 keeps the stored layout.
    expected = model.generate(ids, max_new_tokens=5, jit_compile=True)
    tokens, transposed = _mlp_out_matmuls(model, 2, jit=False)
    assert tokens == expected
    assert transposed == model.backbone.num_layers


def test_plain_graph_beam_search_uses_it_with_the_same_beams():
    model = CausalLM.from_preset("tiny", vocabulary_size=32)
    ids = tf.ragged.constant([[3, 4, 5]], tf.int32)
    # Under XLA, 2 beams are 2 rows: the stored layout.
    expected = model.generate(
        ids, max_new_tokens=4, num_beams=2, jit_compile=True
    )
    tokens = model.generate(
        ids, max_new_tokens=4, num_beams=2, jit_compile=False
    )
    assert tokens == expected
    beam = model.generator(False)._beam
    (concrete,) = beam._list_all_concrete_functions()
    library = concrete.graph.as_graph_def().library
    body = [
        n
        for f in library.function
        if "_body_" in f.signature.name
        for n in f.node_def
    ]
    transposed = sum(n.op == "MatMul" and n.attr["transpose_b"].b for n in body)
    assert transposed == model.backbone.num_layers
