import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.models import CausalLM
from tflm.models import optimizer as optimizer_lib
from tflm.train import trainer as trainer_lib

B, T, V = 8, 8, 32


def _batch(seed=0, batch=B):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, (batch, T + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((batch, T), bool)}
    return x, ids[:, 1:], np.ones((batch, T), "float32")


def _trainer(accumulation_steps=1, precision="float32", seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    lm = CausalLM.from_preset("tiny", dtype=precision)
    trainer = trainer_lib.LMTrainer(lm, accumulation_steps)
    optimizer = optimizer_lib.make_optimizer(
        learning_rate=kwargs.pop("learning_rate", 1e-2),
        min_learning_rate=1e-3,
        warmup_steps=0,
        total_steps=100,
        precision=precision,
        sum_gradients=False,
        **kwargs,
    )
    trainer.compile(optimizer=optimizer, jit_compile=False)
    return trainer


def _fit(trainer, batches):
    data = tf.data.Dataset.from_tensor_slices(batches).batch(
        len(batches[1]) // 1
    )
    history = trainer.fit(data, epochs=1, verbose=0)
    return history.history["loss"][-1]


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_accumulating_4_micro_batches_of_2_equals_one_batch_of_8():
    batches = _batch()
    whole, accumulated = _trainer(1), _trainer(4)
    loss_whole = _fit(whole, batches)
    loss_accumulated = _fit(accumulated, batches)
    assert loss_accumulated == pytest.approx(loss_whole, abs=1e-6)
    for a, b in zip(_weights(accumulated.lm), _weights(whole.lm), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # And the update did change the weights.
    initial = _weights(_trainer(1).lm)
    assert any(
        not np.allclose(a, b)
        for a, b in zip(initial, _weights(whole.lm), strict=True)
    )


def test_loss_is_the_mean_token_cross_entropy():
    trainer = _trainer()
    x, y, w = _batch()
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        y, trainer.lm(x)
    )
    logs = trainer.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(float(expected), rel=1e-6)


def test_accumulation_must_divide_the_batch():
    with pytest.raises(ValueError, match="accumulation_steps"):
        trainer_lib.LMTrainer(CausalLM.from_preset("tiny"), 0)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_training_lowers_the_loss(precision):
    trainer = _trainer(precision=precision, learning_rate=3e-2)
    x, y, w = _batch(batch=16)
    data = tf.data.Dataset.from_tensors((x, y, w)).repeat(30)
    history = trainer.fit(data, epochs=1, verbose=0)
    before = trainer_lib.LMTrainer(_trainer().lm)
    losses = history.history
    assert np.isfinite(losses["loss"][-1])
    final = trainer.evaluate(x, y, sample_weight=w, verbose=0)
    del before
    assert final < 0.8 * np.log(V)
    variable = trainer.lm.backbone.token_embedding.embeddings
    assert variable.dtype == "float32"
    if precision == "mixed_float16":
        assert isinstance(
            trainer.optimizer, keras.optimizers.LossScaleOptimizer
        )
