"""The export's transposed projection kernels (`tflm.export.layout`)."""

import keras
import numpy as np
import pytest
import serving_helpers as helpers
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from tflm import graph
from tflm.export import layout
from tflm.export import signatures
from tflm.generation import beam
from tflm.generation import loop
from tflm.layers import matvec
from tflm.models import weights as weights_lib
from tflm.models.causal_lm import CausalLM

# TensorFlow's oneDNN kernels (its default on x86), or Eigen's.
ONEDNN = _pywrap_util_port.IsMklEnabled()


@pytest.mark.parametrize(
    ("dtype", "use_bias"),
    [("float32", True), ("float32", False), ("bfloat16", True)],
)
def test_transposed_dense_computes_what_the_dense_does(dtype, use_bias):
    dense = keras.layers.Dense(5, use_bias=use_bias, dtype=dtype)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    dense(x)
    if use_bias:
        dense.bias.assign(np.arange(5, dtype="float32") / 10)
    expected = dense(x)
    out = layout.TransposedDense(dense)(x)
    assert out.dtype == expected.dtype
    assert layout.TransposedDense(dense).kernel_t.shape == (5, 4)
    tol = 1e-6 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(
        tf.cast(out, tf.float32), tf.cast(expected, tf.float32), atol=tol
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 8])
def test_row_blocks_give_the_same_numbers_as_one_product(dtype, rows):
    # bench-small's MLP input projection: 1536 x 384, 4 blocks.
    dense = keras.layers.Dense(1536, dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 384)).astype("float32")
    dense(x)
    dense.bias.assign(rng.normal(size=1536).astype("float32"))
    split = layout.TransposedDense(dense)
    assert split.num_blocks == layout.ROW_BLOCKS == 4
    whole = matvec.times_transposed(x, split.kernel_t.value, dense.bias.value)
    if ONEDNN:  # each output is the same dot product: equal, not close
        np.testing.assert_array_equal(split(x), whole)
    else:  # Eigen's threaded MatMul sums in another order
        np.testing.assert_allclose(
            tf.cast(split(x), tf.float32), tf.cast(whole, tf.float32), 1e-5
        )
    np.testing.assert_allclose(
        tf.cast(split(x), tf.float32),
        tf.cast(dense(x), tf.float32),
        rtol=1e-5 if dtype == "float32" else 1e-2,
        atol=1e-5 if dtype == "float32" else 1e-2,
    )
    graph_def = tf.function(split).get_concrete_function(x).graph.as_graph_def()
    ops = [n.op for n in graph_def.node]
    assert ops.count("MatMul") == 4 and ops.count("ConcatV2") == 1
    small = keras.layers.Dense(64, dtype=dtype)
    small.build((None, 64))
    assert layout.TransposedDense(small).num_blocks == 1


@pytest.mark.parametrize(
    ("shape", "dtype", "blocks"),
    [
        ((256, 256), "float32", 4),  # 256 KiB exactly, 64 rows a block
        ((256, 255), "float32", 1),  # a row of 4 bytes short of 256 KiB
        ((128, 4096), "float32", 1),  # 2 MiB, but 32 rows a block
        ((384, 384), "bfloat16", 4),  # bench-small's output, 288 KiB
        ((384, 192), "bfloat16", 1),
    ],
)
def test_which_kernels_get_row_blocks(shape, dtype, blocks):
    assert layout.num_row_blocks(*shape, dtype) == blocks


LLAMA_BLOCK = dict(
    num_heads=2,
    num_key_value_heads=1,
    norm="rmsnorm",
    activation="swiglu",
    position_embedding="rotary",
    use_bias=False,
    tie_embeddings=False,
)


@pytest.mark.parametrize(
    ("shape", "weights"),
    [({}, None), ({}, "bfloat16"), (LLAMA_BLOCK, None)],
)
def test_projections_are_swapped_only_inside_the_context(shape, weights):
    lm = CausalLM.from_preset("tiny", vocabulary_size=64, **shape)
    if weights:
        lm = weights_lib.converted(lm, weights)
    before = weights_lib.projections(lm)
    paths = [v.path for v in lm.weights]
    ids = {
        "token_ids": np.arange(6, dtype="int32")[None],
        "padding_mask": np.ones((1, 6), "int32"),
    }
    expected = lm(ids)
    embedding = lm.backbone.token_embedding
    with layout.transposed_projections(lm) as count:
        assert count == len(before) + lm.backbone.tie_embeddings
        block = lm.backbone.blocks[0]
        assert isinstance(block.mlp_in, layout.TransposedDense)
        tied = isinstance(lm.backbone.token_embedding, layout.TransposedTable)
        assert tied == lm.backbone.tie_embeddings
        # Keras' tracking never sees the swap: the same weights, in order.
        assert [v.path for v in lm.weights] == paths
        inside = lm(ids)
    assert inside.dtype == expected.dtype
    tol = 1e-5 if weights is None else 2e-2
    np.testing.assert_allclose(inside, expected, atol=tol)
    assert weights_lib.projections(lm) == before
    assert lm.backbone.token_embedding is embedding


def test_int8_projections_keep_their_own_matmul():
    lm = CausalLM.from_preset("tiny", vocabulary_size=64)
    lm = weights_lib.converted(lm, "int8")
    with layout.transposed_projections(lm) as count:
        assert count == 0


def test_mixed_precision_projections_keep_keras_autocast():
    lm = CausalLM.from_preset(
        "tiny", vocabulary_size=64, dtype="mixed_bfloat16"
    )
    assert lm.backbone.blocks[0].mlp_in.compute_dtype == "bfloat16"
    with layout.transposed_projections(lm) as count:
        assert count == 1  # the tied table only
        table = lm.backbone.token_embedding
        assert isinstance(table, layout.TransposedTable)
        assert table.table_t.dtype == "bfloat16"  # the head's dtype
        assert not any(
            isinstance(p, layout.TransposedDense)
            for p in weights_lib.projections(lm)
        )


def _embeddings(weights=None, **shape):
    lm = CausalLM.from_preset("tiny", vocabulary_size=64, **shape)
    if weights:
        lm = weights_lib.converted(lm, weights)
    return lm.backbone.token_embedding


@pytest.mark.parametrize(
    ("weights", "dtype"),
    [(None, "float32"), ("bfloat16", "float32"), (None, "mixed_bfloat16")],
)
def test_transposed_table_computes_what_the_embedding_does(weights, dtype):
    embedding = _embeddings(weights, dtype=dtype)
    table = layout.TransposedTable(embedding)
    assert table.table_t.shape == (embedding.output_dim, 64)
    ids = tf.constant([[1, 5, 63], [0, 2, 2]])
    looked_up = table(ids)
    assert looked_up.dtype == embedding(ids).dtype
    np.testing.assert_array_equal(looked_up, embedding(ids))
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 3, embedding.output_dim)) * 30
    hidden = tf.cast(hidden, embedding.compute_dtype)
    logits = table(hidden, reverse=True)
    expected = embedding(hidden, reverse=True)
    assert logits.dtype == expected.dtype
    expected = tf.cast(expected, tf.float32)
    assert float(tf.reduce_max(tf.abs(expected))) > 1.0  # tolerances below
    tol = 1e-5 if dtype == "float32" and not weights else 2e-2
    np.testing.assert_allclose(tf.cast(logits, tf.float32), expected, atol=tol)


def test_untied_and_int8_tables_are_not_transposed():
    untied = CausalLM.from_preset(
        "tiny", vocabulary_size=64, tie_embeddings=False
    )
    int8 = weights_lib.converted(CausalLM.from_preset("tiny"), "int8")
    for lm in (untied, int8):
        embedding = lm.backbone.token_embedding
        with layout.transposed_projections(lm):
            assert lm.backbone.token_embedding is embedding


def test_the_model_is_restored_when_the_export_fails():
    lm = CausalLM.from_preset("tiny", vocabulary_size=64)
    before = weights_lib.projections(lm)
    with pytest.raises(RuntimeError, match="disk"):
        with layout.transposed_projections(lm):
            raise RuntimeError("disk full")
    assert weights_lib.projections(lm) == before


def test_decode_and_beam_loops_read_no_variable_with_transposed_kernels():
    lm = CausalLM.from_preset("tiny", vocabulary_size=64)
    ids = tf.constant([[1, 2, 3]])
    one = {"max_new_tokens": tf.constant([4]), "eos_id": tf.constant(-1)}
    one["pad_id"] = tf.constant(0)
    sampling = {
        **one,
        "temperature": tf.constant([0.0]),
        "top_k": tf.constant([0]),
        "top_p": tf.constant([1.0]),
        "seed": tf.constant([0]),
        "stop_ids": tf.constant([-1]),
    }
    forward, to_logits = lm.backbone.call_with_cache, lm.logits_from_hidden
    with layout.transposed_projections(lm):

        @graph.function
        def run():
            mask = tf.ones_like(ids)
            cache = lm.backbone.init_cache(1, 8)
            greedy = loop.generate(
                forward, to_logits, cache, ids, mask, sampling, in_place=True
            )
            cache = lm.backbone.init_cache(1, 8)
            beams = beam.generate(
                forward, to_logits, cache, ids, mask, one, 1,
                tf.constant([1.0]), tf.constant([False]), 1,
            )  # fmt: skip
            return greedy["token_ids"], beams["token_ids"]

        library = run.get_concrete_function().graph.as_graph_def().library
        greedy, beams = run()
    np.testing.assert_array_equal(greedy, beams)
    # The decode loop's `while_body_*` and the beam loop's `while_1_body_*`.
    bodies = [f for f in library.function if "_body_" in f.signature.name]
    assert len(bodies) == 2
    for body in bodies:
        assert "ReadVariableOp" not in [n.op for n in body.node_def]


def test_the_export_reads_only_the_transposed_table_and_scores_the_same():
    lm = helpers.byte_model()
    text = tf.constant(["to be or not", "a"])
    outside = signatures.ServingModule(lm, lm.tokenizer)
    plain = outside.score_text(text)
    assert "token_embedding/embeddings:0" in [
        v.name for v in outside.serving_variables
    ]
    with layout.transposed_projections(lm):
        module = signatures.ServingModule(lm, lm.tokenizer)
        names = [v.name for v in module.serving_variables]
        scored = module.score_text(text)
    assert "embeddings_t:0" in names
    assert "token_embedding/embeddings:0" not in names, names
    for key in ("log_likelihood", "num_tokens"):
        np.testing.assert_allclose(scored[key], plain[key], rtol=1e-5)
