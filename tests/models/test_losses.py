import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.models import CausalLM
from tflm.models import losses
from tflm.models import train_step


def _keras_loss_and_gradient(labels, logits, upstream):
    with tf.GradientTape() as tape:
        tape.watch(logits)
        values = keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True
        )
        total = tf.reduce_sum(tf.cast(values, tf.float32) * upstream)
    return values, tape.gradient(total, logits)


def _loss_and_gradient(labels, logits, upstream):
    with tf.GradientTape() as tape:
        tape.watch(logits)
        values = losses.sparse_cross_entropy(labels, logits)
        total = tf.reduce_sum(values * upstream)
    return values, tape.gradient(total, logits)


@pytest.mark.parametrize("shape", [(6, 11), (2, 3, 11)], ids=["2d", "3d"])
def test_values_and_gradient_are_keras_cross_entropy(shape):
    rng = np.random.default_rng(0)
    logits = tf.constant(5 * rng.normal(size=shape), tf.float32)
    labels = tf.constant(rng.integers(0, shape[-1], shape[:-1]), tf.int32)
    upstream = tf.constant(rng.uniform(0.5, 2.0, shape[:-1]), tf.float32)
    want, want_grad = _keras_loss_and_gradient(labels, logits, upstream)
    got, grad = _loss_and_gradient(labels, logits, upstream)
    assert got.shape == shape[:-1] and got.dtype == tf.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_bfloat16_logits_give_a_bfloat16_gradient():
    rng = np.random.default_rng(1)
    logits32 = tf.constant(3 * rng.normal(size=(4, 9)), tf.float32)
    logits = tf.cast(logits32, tf.bfloat16)
    labels = tf.constant(rng.integers(0, 9, (4,)), tf.int32)
    ones = tf.ones((4,))
    want, want_grad = _keras_loss_and_gradient(
        labels, tf.cast(logits, tf.float32), ones
    )
    got, grad = _loss_and_gradient(labels, logits, ones)
    assert got.dtype == tf.float32 and grad.dtype == tf.bfloat16
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(tf.cast(grad, tf.float32), want_grad, atol=4e-3)


def test_a_label_with_no_probability_left_keeps_its_exact_loss():
    # exp(-200) underflows in float32: the label's probability is 0, and
    # its loss must still be 200 + log(1 + e^-1), not inf or a cap.
    logits = tf.constant([[0.0, -1.0, -200.0]])
    got, grad = _loss_and_gradient(tf.constant([2]), logits, tf.ones((1,)))
    want = 200.0 + np.log1p(np.exp(-1.0))
    np.testing.assert_allclose(got, [want], rtol=1e-6)
    np.testing.assert_allclose(grad[0, 2], -1.0)
    assert np.isfinite(grad).all()


def test_a_label_outside_the_vocabulary_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError):
        losses.sparse_cross_entropy(tf.constant([3]), tf.zeros((1, 3)))


def test_the_train_step_loss_runs_no_sparse_cross_entropy_op():
    lm = CausalLM.from_preset("tiny")
    x = {
        "token_ids": tf.ones((2, 4), tf.int32),
        "padding_mask": tf.ones((2, 4), tf.int32),
    }
    y = tf.constant([[1, 2, 3, 0], [3, 1, 0, 2]], tf.int32)
    weight = tf.constant([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])

    @tf.function(autograph=False)
    def loss_and_gradients():
        with tf.GradientTape() as tape:
            total = train_step.token_loss_sum(lm, x, y, weight, True)
        return total, tape.gradient(total, lm.trainable_variables)

    graph = loss_and_gradients.get_concrete_function().graph
    types = {op.type for op in graph.get_operations()}
    assert "SparseSoftmaxCrossEntropyWithLogits" not in types
    want = keras.losses.sparse_categorical_crossentropy(
        y, lm(x, training=True), from_logits=True
    )
    total, _ = loss_and_gradients()
    np.testing.assert_allclose(total, tf.reduce_sum(want * weight), rtol=1e-5)


def test_int64_labels_with_a_trailing_axis_and_xla_give_the_same_losses():
    rng = np.random.default_rng(2)
    logits = tf.constant(4 * rng.normal(size=(2, 3, 7)), tf.float32)
    labels = rng.integers(0, 7, (2, 3))
    want = losses.sparse_cross_entropy(tf.constant(labels, tf.int32), logits)
    trailing = tf.constant(labels[..., None], tf.int64)
    np.testing.assert_array_equal(
        losses.sparse_cross_entropy(trailing, logits), want
    )
    compiled = tf.function(
        lambda y, z: _loss_and_gradient(y, z, tf.ones((2, 3))),
        jit_compile=True,
    )
    got, grad = compiled(tf.constant(labels, tf.int32), logits)
    _, want_grad = _keras_loss_and_gradient(labels, logits, tf.ones((2, 3)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
