"""`tflm.models.decode_plan`: weights read once and laid out for decoding."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from tflm import graph
from tflm.models import decode_plan
from tflm.models import weights as weights_lib
from tflm.models.causal_lm import CausalLM

# TensorFlow's oneDNN kernels (its default on x86), or Eigen's.
ONEDNN = _pywrap_util_port.IsMklEnabled()


def _ops(concrete):
    """`{function name: [op types]}`: the outer graph under `""`."""
    graph_def = concrete.graph.as_graph_def()
    out = {"": [n.op for n in graph_def.node]}
    for function in graph_def.library.function:
        out[function.signature.name] = [n.op for n in function.node_def]
    return out


def _bodies(ops):
    return [types for name, types in ops.items() if "while_body" in name]


def _body_nodes(concrete):
    library = concrete.graph.as_graph_def().library
    return [
        n
        for f in library.function
        if "while_body" in f.signature.name
        for n in f.node_def
    ]


def _transposed_matmuls(nodes):
    return sum(n.op == "MatMul" and n.attr["transpose_b"].b for n in nodes)


def _matmuls_of_a_transpose(nodes):
    """MatMuls whose operand is transposed in the same function."""
    transposes = {n.name for n in nodes if n.op == "Transpose"}
    return sum(
        n.op == "MatMul" and any(i.split(":")[0] in transposes for i in n.input)
        for n in nodes
    )


# WeightReads -----------------------------------------------------------------
def _loop(layer, in_plan):
    @graph.function
    def run(x):
        def body(i, x):
            return i + 1, layer(x)

        if not in_plan:
            return tf.while_loop(lambda i, x: i < 3, body, (0, x))[1]
        plan = decode_plan.DecodePlan(decode_plan.Layout())
        with plan.scope():
            return tf.while_loop(lambda i, x: i < 3, body, (0, x))[1]

    return run


def test_a_loop_body_in_a_plan_reads_no_variable_and_computes_the_same():
    layer = keras.layers.Dense(4, activation="tanh")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 4)), tf.float32)
    layer(x)
    plain, planned = _loop(layer, False), _loop(layer, True)
    np.testing.assert_array_equal(plain(x), planned(x))
    ops = _ops(planned.get_concrete_function(x))
    bodies = _bodies(ops)
    assert bodies and all("ReadVariableOp" not in b for b in bodies)
    # Each weight is read once, outside the loop.
    assert ops[""].count("ReadVariableOp") == 2
    plain_ops = _ops(plain.get_concrete_function(x))
    assert sum(b.count("ReadVariableOp") for b in _bodies(plain_ops)) == 2


def test_a_variable_used_twice_is_read_once():
    layer = keras.layers.Dense(4)
    x = tf.ones((1, 4))
    layer(x)

    @graph.function
    def f(x):
        with decode_plan.DecodePlan(decode_plan.Layout()).scope():
            return layer(layer(x))

    ops = _ops(f.get_concrete_function(x))
    assert ops[""].count("ReadVariableOp") == 2
    np.testing.assert_allclose(f(x), layer(layer(x)), rtol=1e-6)


def test_a_mixed_policy_casts_once_outside_the_loop():
    layer = keras.layers.Dense(4, dtype="mixed_bfloat16")
    x = tf.ones((1, 4), tf.bfloat16)
    layer(x)
    run = _loop(layer, True)
    assert run(x).dtype == tf.bfloat16
    np.testing.assert_array_equal(run(x), _loop(layer, False)(x))
    ops = _ops(run.get_concrete_function(x))
    (body,) = _bodies(ops)
    # The float32 kernel and bias arrive in bfloat16, cast once outside.
    assert body.count("Cast") == 0
    assert ops[""].count("Cast") == 2
    plain = _ops(_loop(layer, False).get_concrete_function(x))
    assert _bodies(plain)[0].count("Cast") == 2


def test_an_assign_within_a_plan_is_an_error():
    v = keras.Variable(1.0)

    @graph.function
    def f():
        with decode_plan.DecodePlan(decode_plan.Layout()).scope():
            v.assign(5.0)
        return v.value

    with pytest.raises(ValueError, match="assigned while a decode plan"):
        f()
    assert float(v.numpy()) == 1.0


def test_an_enclosing_stateless_scope_keeps_its_values():
    v = keras.Variable(1.0)

    @graph.function
    def f():
        plan = decode_plan.DecodePlan(decode_plan.Layout())
        with keras.StatelessScope(state_mapping=[(v, tf.constant(7.0))]):
            with plan.scope():
                return tf.convert_to_tensor(v.value) + 0.0

    assert float(f()) == 7.0


# Row blocks ------------------------------------------------------------------
def test_split_rows_are_as_equal_as_can_be():
    value = tf.reshape(tf.range(14.0), (7, 2))
    blocks = decode_plan.split_rows(value, 3)
    assert [tuple(b.shape) for b in blocks] == [(3, 2), (2, 2), (2, 2)]
    np.testing.assert_array_equal(tf.concat(blocks, 0), value)
    assert len(decode_plan.split_rows(value, 7)) == 7


@pytest.mark.parametrize("parts", [0, 8, 2.0])
def test_split_rows_refuses_a_bad_count(parts):
    with pytest.raises(ValueError, match=f"Received: parts={parts!r}"):
        decode_plan.split_rows(tf.zeros((7, 2)), parts)


@pytest.mark.parametrize(
    ("shape", "dtype", "blocks"),
    [
        ((256, 256), "float32", 4),  # 256 KiB exactly, 64 rows a block
        ((256, 255), "float32", 1),  # a row of 4 bytes short of 256 KiB
        ((128, 4096), "float32", 1),  # 2 MiB, but 32 rows a block
        ((1536, 384), "bfloat16", 4),  # bench-small's MLP input, 1152 KiB
        ((384, 384), "bfloat16", 4),  # bench-small's output, 288 KiB
        ((384, 192), "bfloat16", 1),
    ],
)
def test_which_kernels_get_row_blocks(shape, dtype, blocks):
    assert decode_plan.num_row_blocks(*shape, dtype) == blocks


def _wide(dtype):
    """A one-block model with bench-small's MLP widths (1536 x 384)."""
    lm = CausalLM.from_preset(
        "tiny", num_layers=1, hidden_dim=384, intermediate_dim=1536
    )
    if dtype == "bfloat16":
        weights_lib.convert_weights(lm, "bfloat16")
    layer = lm.backbone.blocks[0].mlp_in
    layer.bias.assign(np.random.default_rng(1).normal(size=1536))
    return lm, layer


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 8])
def test_row_blocks_give_the_same_numbers_as_one_product(dtype, rows):
    lm, layer = _wide(dtype)
    stored = decode_plan.StoredWeights(lm)
    assert stored.kernel(layer).num_blocks == decode_plan.ROW_BLOCKS == 4
    x = np.random.default_rng(0).normal(size=(rows, 384)).astype("float32")

    @graph.function
    def split(x):
        plan = decode_plan.DecodePlan(decode_plan.Layout("graph", True, stored))
        with plan.scope():
            return plan.project(layer, x)

    whole = decode_plan.times_transposed(
        x, tf.transpose(layer.kernel), layer.bias
    )
    out = split(x)
    if ONEDNN:  # each output is the same dot product: equal, not close
        np.testing.assert_array_equal(out, whole)
    else:  # Eigen's threaded MatMul sums in another order
        np.testing.assert_allclose(out, whole, rtol=1e-5)
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(
        tf.cast(out, tf.float32),
        tf.cast(layer(x), tf.float32),
        rtol=tol,
        atol=tol,
    )
    ops = _ops(split.get_concrete_function(x))[""]
    assert ops.count("MatMul") == 4 and ops.count("ConcatV2") == 1


def test_times_transposed_is_what_dense_computes():
    dense = keras.layers.Dense(5)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    dense(x)
    dense.bias.assign(np.arange(5, dtype="float32") / 10)
    kernel_t = tf.transpose(dense.kernel)
    out = decode_plan.times_transposed(x, kernel_t, dense.bias)
    np.testing.assert_allclose(out, dense(x), rtol=1e-6, atol=1e-6)
    blocks = decode_plan.split_rows(kernel_t, 2)
    np.testing.assert_allclose(
        decode_plan.times_transposed(x, blocks, dense.bias), out, rtol=1e-6
    )
    no_bias = decode_plan.times_transposed(x, kernel_t)
    np.testing.assert_allclose(no_bias, out - dense.bias, atol=1e-6)
    with pytest.raises(ValueError, match="at least one block"):
        decode_plan.times_transposed(x, [])


def test_times_transposed_with_bfloat16_kernels_and_a_float32_bias():
    kernel_t = tf.cast([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], tf.bfloat16)
    x = tf.constant([[1.0, 1.0]])
    out = decode_plan.times_transposed(x, kernel_t, tf.constant([0.5] * 3))
    assert out.dtype == tf.float32
    np.testing.assert_array_equal(out, [[3.5, 7.5, 11.5]])
    assert decode_plan.times_transposed(x, kernel_t).dtype == tf.bfloat16


def _built(layer):
    layer.build((None, 3))
    return layer


def test_plain_dense_and_plain_table():
    assert decode_plan.plain_dense(_built(keras.layers.Dense(2)))
    assert not decode_plan.plain_dense(_built(keras.layers.Dense(2, "relu")))
    mixed = keras.layers.Dense(2, dtype="mixed_bfloat16")
    assert not decode_plan.plain_dense(_built(mixed))
    lm = CausalLM.from_preset("tiny")
    assert decode_plan.plain_table(lm.backbone.token_embedding)
    untied = CausalLM.from_preset("tiny", tie_embeddings=False)
    assert not decode_plan.plain_table(untied.backbone.token_embedding)
    int8 = weights_lib.converted(lm, "int8")
    assert not decode_plan.plain_table(int8.backbone.token_embedding)
    assert not any(
        decode_plan.plain_dense(p) for p in weights_lib.projections(int8)
    )


# Plans on the tiny model -----------------------------------------------------
def _scaled(lm):
    """Large random weights: logits far apart, greedy text that is not one
    repeated id, and a wrong layout shows."""
    rng = np.random.default_rng(1)
    for v in lm.weights:
        if len(v.shape) == 2:
            std = 1.0 if "embedding" in v.path else 3.0 / np.sqrt(v.shape[0])
            v.assign(rng.normal(0, std, v.shape))
        else:
            v.assign(v.numpy() + rng.normal(0, 0.3, v.shape))
    return lm


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return _scaled(CausalLM.from_preset("tiny"))


@pytest.fixture(scope="module")
def tiny_bf16(tiny):
    return weights_lib.converted(tiny, "bfloat16")


@pytest.fixture(scope="module")
def tiny_llama():
    """Grouped keys and values, RoPE, SwiGLU, no biases, an untied head."""
    keras.utils.set_random_seed(0)
    return _scaled(
        CausalLM.from_preset(
            "tiny",
            num_key_value_heads=1,
            norm="rmsnorm",
            activation="swiglu",
            position_embedding="rotary",
            use_bias=False,
            tie_embeddings=False,
        )
    )


def _layout(name, lm):
    return {
        "xla": decode_plan.Layout("xla"),
        "graph": decode_plan.Layout("graph"),
        "as stored": decode_plan.Layout("graph", relayout=False),
        "stored": decode_plan.Layout(
            "graph", False, decode_plan.StoredWeights(lm)
        ),
    }[name]


def _close(actual, expected, bf16):
    assert actual.dtype == expected.dtype
    tol = 3e-2 if bf16 else 1e-5
    np.testing.assert_allclose(
        tf.cast(actual, tf.float32),
        tf.cast(expected, tf.float32),
        rtol=tol,
        atol=tol,
    )


# (layout, rows, MatMuls by a transposed kernel in a loop body: each
# block's narrowing mlp_out, or all 4 projections of each block, stored)
PLAN_CASES = [
    ("xla", 1, 2),
    ("xla", 3, 0),
    ("graph", 1, 2),
    ("graph", 3, 2),
    ("as stored", 3, 0),
    ("stored", 1, 8),
]


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("name", "rows", "transposed"), PLAN_CASES)
def test_project_head_and_lookup_are_the_layers_own(
    tiny, tiny_bf16, bf16, name, rows, transposed
):
    lm = tiny_bf16 if bf16 else tiny
    layout = _layout(name, lm)
    layers = weights_lib.projections(lm)
    embedding = lm.backbone.token_embedding
    rng = np.random.default_rng(rows)
    xs = [
        tf.constant(rng.normal(size=(rows, p.kernel.shape[0])), tf.float32)
        for p in layers
    ]
    hidden = tf.constant(rng.normal(size=(rows, 8)), tf.float32)
    ids = tf.constant([[1, 5, 31], [0, 2, 2]])
    expected = (
        [p(x) for p, x in zip(layers, xs, strict=True)],
        embedding(hidden, reverse=True),
        embedding(ids),
    )

    @graph.function
    def run(xs, hidden, ids):
        plan = decode_plan.DecodePlan(layout)

        def body(i, _):
            with plan.scope():
                return i + 1, (
                    [
                        plan.project(p, x)
                        for p, x in zip(layers, xs, strict=True)
                    ],
                    plan.head(embedding, hidden),
                    plan.lookup(embedding, ids),
                )

        init = tf.nest.map_structure(tf.zeros_like, expected)
        return tf.while_loop(lambda i, _: i < 2, body, (0, init))[1]

    out = run(xs, hidden, ids)
    for actual, want in zip(out[0], expected[0], strict=True):
        _close(actual, want, bf16)
    _close(out[1], expected[1], bf16)
    assert float(tf.reduce_max(tf.abs(tf.cast(expected[1], tf.float32)))) > 1
    np.testing.assert_array_equal(out[2], expected[2])
    assert out[2].dtype == expected[2].dtype
    body = _body_nodes(run.get_concrete_function(xs, hidden, ids))
    assert "ReadVariableOp" not in [n.op for n in body]
    assert _transposed_matmuls(body) == transposed
    # The head multiplies by a table transposed before the loop, or by
    # Keras' own transpose of it in the body.
    relaid = name in ("graph", "stored")
    assert _matmuls_of_a_transpose(body) == (0 if relaid else 1)


def _prompt():
    ids = tf.constant([[3, 4, 5, 6], [0, 9, 2, 7]])
    mask = tf.constant([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    positions = tf.constant([[0, 1, 2, 3], [0, 0, 1, 2]])
    return ids, mask, positions


def _plain_decode(lm):
    """Prefill 4 tokens, then one step, without a plan: eager."""
    ids, mask, positions = _prompt()
    backbone = lm.backbone
    cache = backbone.init_cache(2, 6)
    hidden, cache = backbone.call_with_cache(ids, cache, 0, mask, positions)
    prefill = (lm.logits_from_hidden(hidden[:, -1]), cache)
    token = tf.constant([[8], [1]])
    hidden, cache = backbone.call_with_cache(
        token, cache, 4, mask, positions[:, -1:] + 1
    )
    return prefill, (lm.logits_from_hidden(hidden[:, 0]), cache)


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "llama"])
@pytest.mark.parametrize("name", ["xla", "graph", "as stored", "stored"])
def test_decoding_forward_step_and_logits_equal_the_plain_model(
    tiny, tiny_bf16, tiny_llama, kind, name
):
    lm = {"float32": tiny, "bfloat16": tiny_bf16, "llama": tiny_llama}[kind]
    bf16 = kind == "bfloat16"
    layout = _layout(name, lm)

    @graph.function(jit_compile=layout.backend == "xla")
    def run():
        ids, mask, positions = _prompt()
        decoding = lm.decoding(layout)
        cache = decoding.init_cache(2, 6)
        hidden, cache = decoding.forward(ids, cache, 0, mask, positions)
        prefill = (decoding.to_logits(hidden[:, -1]), cache)
        token = tf.constant([[8], [1]])
        hidden, owned = decoding.step(
            token, decoding.own(cache), 4, mask, positions[:, -1:] + 1
        )
        return prefill, (decoding.to_logits(hidden[:, 0]), owned)

    out = run()
    expected = _plain_decode(lm)
    for (logits, cache), (want, want_cache) in zip(out, expected, strict=True):
        assert logits.dtype == tf.float32
        _close(logits, want, bf16)
        for layer, want_layer in zip(cache, want_cache, strict=True):
            _close(layer, want_layer, bf16)
    # The step wrote slot 4 of its own copy, not of the prefill's cache.
    assert not np.any(out[0][1][0][:, :, :, 4].numpy())
    assert np.all(out[1][1][0][:, :, :, 4].numpy() != 0)


def test_stored_weights_leave_the_model_as_it_is(tiny):
    before = [(v.path, v.dtype, v.numpy()) for v in tiny.weights]
    layers = weights_lib.projections(tiny)
    stored = decode_plan.StoredWeights(tiny)
    # 4 projections in each of 2 blocks, and the tied table.
    assert stored.count == 9
    after = [(v.path, v.dtype, v.numpy()) for v in tiny.weights]
    assert [b[:2] for b in before] == [a[:2] for a in after]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(b[2], a[2])
    assert weights_lib.projections(tiny) == layers
    for layer in layers:
        kept = stored.kernel(layer)
        np.testing.assert_array_equal(kept.kernel_t, tf.transpose(layer.kernel))
        assert kept.num_blocks == 1
    table = tiny.backbone.token_embedding.embeddings
    np.testing.assert_array_equal(stored.table_t, tf.transpose(table))


def test_what_stored_weights_keep_of_other_models():
    mixed = CausalLM.from_preset("tiny", dtype="mixed_bfloat16")
    stored = decode_plan.StoredWeights(mixed)
    # Projections keep Keras' autocast; the table is in the head's dtype.
    assert stored.count == 1 and stored.table_t.dtype == "bfloat16"
    untied = CausalLM.from_preset("tiny", tie_embeddings=False)
    stored = decode_plan.StoredWeights(untied)
    assert stored.count == 8 and stored.table_t is None
    int8 = weights_lib.converted(untied, "int8")
    assert decode_plan.StoredWeights(int8).count == 0


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="Received: backend='tpu'"):
        decode_plan.Layout("tpu")
    assert decode_plan.Layout("graph").in_place
    assert not decode_plan.Layout("xla").in_place


def test_two_plans_traced_side_by_side_share_no_mode(tiny):
    stored = decode_plan.StoredWeights(tiny)
    layouts = (
        decode_plan.Layout("graph"),
        decode_plan.Layout("xla", stored=stored),
    )
    ids, mask, positions = _prompt()

    @graph.function
    def run():
        # Interleaved: both plans are live while either is used.
        decodings = [tiny.decoding(layout) for layout in layouts]
        hiddens = [
            d.forward(ids, d.init_cache(2, 6), 0, mask, positions)[0]
            for d in decodings
        ]
        return [d.to_logits(h) for d, h in zip(decodings, hiddens, strict=True)]

    graphed, stored_xla = run()
    hidden, _ = tiny.backbone.call_with_cache(
        ids, tiny.backbone.init_cache(2, 6), 0, mask, positions
    )
    expected = tiny.logits_from_hidden(hidden)
    np.testing.assert_allclose(graphed, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stored_xla, expected, rtol=1e-5, atol=1e-5)
    nodes = run.get_concrete_function().graph.as_graph_def().node
    # 8 rows: the plain graph's plan transposes each block's mlp_out, the
    # stored one multiplies by all 8 stored kernels.
    assert _transposed_matmuls(nodes) == 2 + 8


# Generation ------------------------------------------------------------------
def _greedy(lm, prompt, steps):
    """Repeated argmax over full forward passes, in numpy."""
    ids, out = list(prompt), []
    for _ in range(steps):
        x = {
            "token_ids": np.array([ids], "int32"),
            "padding_mask": np.ones((1, len(ids)), "int32"),
        }
        token = int(np.argmax(lm(x).numpy()[0, -1]))
        ids.append(token)
        out.append(token)
    return out


PROMPTS = [[3, 4, 5], [7, 1, 30, 2, 9]]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_generated_tokens_are_a_plain_greedy_loop(tiny, jit_compile):
    expected = [_greedy(tiny, p, 6) for p in PROMPTS]
    assert len({t for e in expected for t in e}) >= 5  # varied text
    out = tiny.generate(PROMPTS, max_new_tokens=6, jit_compile=jit_compile)
    assert out == expected


def test_generation_in_two_threads_at_once_is_each_call_alone(tiny):
    calls = [
        dict(max_new_tokens=6, jit_compile=False),
        dict(max_new_tokens=4, temperature=1.0, seed=3, jit_compile=True),
    ]
    # One copy traces and runs each call alone, another both at once.
    alone = weights_lib.clone(tiny)
    expected = [alone.generate(PROMPTS, **kw) for kw in calls]
    assert expected[0] == [_greedy(tiny, p, 6) for p in PROMPTS]
    assert expected[1] != [e[:4] for e in expected[0]]  # it sampled
    together = weights_lib.clone(tiny)
    results, errors = [None, None], []
    barrier = threading.Barrier(2)

    def call(i):
        try:
            barrier.wait()
            results[i] = together.generate(PROMPTS, **calls[i])
        except Exception as e:  # re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert results == expected
