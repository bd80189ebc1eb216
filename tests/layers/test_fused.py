import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.layers import fused
from tflm.models import CausalLM

RNG = np.random.default_rng(0)
X = tf.constant(RNG.normal(size=(3, 5, 48)).astype("float32") * 3 + 0.5)
WEIGHT = tf.constant(RNG.normal(size=(3, 5, 48)).astype("float32"))


def _value_and_gradients(fn, x, variables=()):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * WEIGHT)
    return [y, *tape.gradient(loss, [x, *variables])]


def _max_diff(a, b):
    return float(
        tf.reduce_max(tf.abs(tf.cast(a, "float32") - tf.cast(b, "float32")))
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gelu_and_its_gradient_equal_keras(dtype):
    x = tf.cast(X, dtype)

    def reference(v):  # Keras' tanh GELU, in float32, cast back
        return tf.cast(keras.ops.gelu(tf.cast(v, "float32"), True), dtype)

    want = _value_and_gradients(reference, x)
    for training in (True, False):
        got = _value_and_gradients(lambda v, t=training: fused.gelu(v, t), x)
        assert got[0].dtype == x.dtype and got[1].dtype == x.dtype
        tolerance = 1e-5 if dtype == "float32" else 2e-2
        assert _max_diff(got[0], want[0]) <= tolerance * 3
        assert _max_diff(got[1], want[1]) <= tolerance * 3
    assert _max_diff(want[1], tf.ones_like(want[1])) > 0.5  # not trivial


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_layer_norm_equals_keras_in_training_and_inference(policy):
    ours = fused.LayerNormalization(epsilon=1e-5, dtype=policy)
    theirs = keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy)
    for layer in (ours, theirs):
        layer.build(X.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 48, dtype="float32"))
        layer.beta.assign(np.linspace(-0.2, 0.3, 48, dtype="float32"))
    np.testing.assert_array_equal(
        tf.cast(ours(X), "float32"), tf.cast(theirs(X), "float32")
    )
    got, want = (
        _value_and_gradients(
            lambda v, layer=layer: layer(v, training=True),
            X,
            [layer.gamma, layer.beta],
        )
        for layer in (ours, theirs)
    )
    assert got[0].dtype == want[0].dtype == ours.compute_dtype
    tolerance = 1e-4 if policy == "float32" else 5e-2
    for a, b in zip(got, want, strict=True):
        assert _max_diff(a, b) <= tolerance * max(1.0, _max_diff(b, 0 * b))
    restored = keras.layers.deserialize(keras.layers.serialize(ours))
    assert type(restored) is fused.LayerNormalization
    assert restored.get_config() == ours.get_config()


def _compiled_calls(graph) -> int:
    """Call sites, in `graph` and the functions in its library, of functions
    that XLA must compile."""
    graph_def = graph.as_graph_def()
    library = {f.signature.name: f for f in graph_def.library.function}
    nodes = [*graph_def.node]
    for function in library.values():
        nodes.extend(function.node_def)
    called = (n.attr["f"].func.name for n in nodes if "f" in n.attr)
    return sum(
        name in library and library[name].attr["_XlaMustCompile"].b
        for name in called
    )


def _tiny_lm_and_batch():
    batch = {
        "token_ids": tf.ones((2, 8), tf.int32),
        "padding_mask": tf.ones((2, 8), tf.int32),
    }
    return CausalLM.from_preset("tiny"), batch


def test_training_runs_the_fused_kernels_and_inference_does_not():
    lm, x = _tiny_lm_and_batch()

    def loss(training):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(lm(x, training=training))
        return tape.gradient(value, lm.trainable_variables)

    training = tf.function(lambda: loss(True)).get_concrete_function().graph
    inference = tf.function(lambda: lm(x)).get_concrete_function().graph
    layers = lm.backbone.num_layers
    # Per block: two layer norms and a GELU, forward and backward; the
    # final norm too.
    assert _compiled_calls(training) >= 2 * (3 * layers + 1)
    assert _compiled_calls(inference) == 0


def test_the_environment_switch_keeps_training_plain(monkeypatch):
    lm, x = _tiny_lm_and_batch()
    monkeypatch.setenv("TFLM_FUSED_KERNELS", "0")
    assert not fused.enabled()
    graph = tf.function(lambda: lm(x, training=True)).get_concrete_function()
    assert _compiled_calls(graph.graph) == 0
    monkeypatch.setenv("TFLM_FUSED_KERNELS", "1")
    graph = tf.function(lambda: lm(x, training=True)).get_concrete_function()
    assert _compiled_calls(graph.graph) > 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_masked_softmax_and_its_gradient_equal_plain_ops(dtype):
    scores = tf.cast(tf.reshape(X, (3, 5, 6, 8)), dtype)
    causal = tf.linalg.band_part(tf.ones((6, 8), tf.bool), -1, 2)
    # The last query row of the first batch sees nothing (a padded query).
    mask = tf.tile(causal[None, None], (3, 1, 1, 1))
    mask = tf.tensor_scatter_nd_update(
        mask, [[0, 0, 5]], tf.zeros((1, 8), tf.bool)
    )
    weight = tf.reshape(WEIGHT[..., :48], (3, 5, 6, 8))

    def value_and_gradient(fn):
        with tf.GradientTape() as tape:
            tape.watch(scores)
            probs = fn(scores)
            loss = tf.reduce_sum(tf.cast(probs, tf.float32) * weight)
        return probs, tape.gradient(loss, scores)

    def reference(s):  # what attention runs without the fused kernel
        s32 = tf.where(mask, tf.cast(s, tf.float32), -1e9)
        return tf.cast(tf.nn.softmax(s32), dtype)

    got = value_and_gradient(lambda s: fused.masked_softmax(s, mask))
    want = value_and_gradient(reference)
    assert got[0].dtype == got[1].dtype == scores.dtype
    tolerance = 1e-6 if dtype == "float32" else 1e-2
    assert _max_diff(got[0], want[0]) <= tolerance
    assert _max_diff(got[1], want[1]) <= tolerance * 5
    assert _max_diff(want[1], 0 * want[1]) > 0.1  # not trivial
    # Masked slots get nothing, but in the row that sees nothing, which is
    # uniform (not NaN).
    probs = tf.cast(got[0], tf.float32)
    sees_something = tf.reduce_any(mask, -1, keepdims=True)
    masked = tf.logical_and(sees_something, tf.logical_not(mask))
    assert float(tf.reduce_max(tf.where(masked, probs, 0.0))) == 0.0
    np.testing.assert_allclose(probs[0, 0, 5], np.full(8, 1 / 8), rtol=1e-2)


def test_mixed_precision_attention_trains_through_the_fused_softmax():
    lm = CausalLM.from_preset("tiny", dtype="mixed_bfloat16")
    x = _tiny_lm_and_batch()[1]
    graph = tf.function(lambda: lm(x, training=True)).get_concrete_function()
    float32 = CausalLM.from_preset("tiny")
    graph32 = tf.function(lambda: float32(x, training=True))
    # Per block one more compiled call than in float32 training, where
    # oneDNN's softmax is the faster one.
    extra = _compiled_calls(graph.graph) - _compiled_calls(
        graph32.get_concrete_function().graph
    )
    assert extra == lm.backbone.num_layers
