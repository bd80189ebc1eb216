import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.models import CausalLM
from tflm.models import optimizer as optimizer_lib

PEAK, FLOOR, WARMUP, TOTAL = 1e-3, 1e-4, 100, 2000


def _cosine(step):
    ratio = (step - WARMUP) / (TOTAL - WARMUP)
    return FLOOR + 0.5 * (1 + math.cos(math.pi * ratio)) * (PEAK - FLOOR)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, PEAK / 101),
        (49, PEAK * 50 / 101),
        (99, PEAK * 100 / 101),
        (100, PEAK),
        (1050, _cosine(1050)),
        (1050, (PEAK + FLOOR) / 2),
        (1999, _cosine(1999)),
        (2000, FLOOR),
        (5000, FLOOR),
    ],
)
def test_warmup_cosine_values(step, expected):
    schedule = optimizer_lib.WarmupDecay(PEAK, WARMUP, TOTAL, FLOOR)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "kind, step, expected",
    [
        ("linear", 100, PEAK),
        ("linear", 1050, (PEAK + FLOOR) / 2),
        ("linear", 2000, FLOOR),
        ("constant", 1500, PEAK),
        ("constant", 10, PEAK * 11 / 101),
    ],
)
def test_other_schedules(kind, step, expected):
    schedule = optimizer_lib.WarmupDecay(PEAK, WARMUP, TOTAL, FLOOR, kind)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_schedule_config_round_trip_and_errors():
    schedule = optimizer_lib.WarmupDecay(PEAK, WARMUP, TOTAL, FLOOR, "linear")
    again = optimizer_lib.WarmupDecay.from_config(schedule.get_config())
    assert again.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="kind"):
        optimizer_lib.WarmupDecay(PEAK, 1, 2, kind="step")


def test_weight_decay_skips_biases_norms_and_embeddings():
    model = CausalLM.from_preset("tiny", tie_embeddings=False)
    optimizer = optimizer_lib.make_optimizer(
        learning_rate=1e-3,
        min_learning_rate=0.0,
        warmup_steps=0,
        total_steps=10,
    )
    optimizer.build(model.trainable_variables)
    decayed = {
        v.path.split("/", 1)[-1]
        for v in model.trainable_variables
        if optimizer._use_weight_decay(v)
    }
    assert decayed and all(
        name.endswith(("kernel", "reverse_embeddings")) for name in decayed
    )
    skipped = {
        v.name
        for v in model.trainable_variables
        if v.path.split("/", 1)[-1] not in decayed
    }
    assert skipped == {"bias", "gamma", "beta", "embeddings"}


def test_a_step_decays_only_matmul_kernels():
    model = CausalLM.from_preset("tiny", tie_embeddings=False)
    optimizer = optimizer_lib.make_optimizer(
        learning_rate=0.1,
        min_learning_rate=0.1,
        warmup_steps=0,
        total_steps=10,
        weight_decay=0.5,
        schedule="constant",
    )
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    zeros = [np.zeros(v.shape, "float32") for v in variables]
    optimizer.build(variables)
    _compiled_apply(optimizer, variables)(zeros)
    for variable, old in zip(variables, before, strict=True):
        name = variable.path.split("/")[-1]
        if name in ("kernel", "reverse_embeddings"):
            np.testing.assert_allclose(variable.numpy(), old * 0.95, rtol=1e-6)
        else:
            np.testing.assert_array_equal(variable.numpy(), old, err_msg=name)


def _compiled_apply(optimizer, variables):
    return tf.function(lambda gradients: optimizer.apply(gradients, variables))


def test_the_fused_update_is_keras_adamw():
    """`AdamW.update_step` (one ResourceApplyAdam per variable) moves the
    weights and moments as Keras' own Adam update does."""

    class KerasUpdate(optimizer_lib.AdamW):
        update_step = keras.optimizers.AdamW.update_step

    rng = np.random.default_rng(0)
    start = [rng.normal(size=s).astype("float32") for s in [(6, 5), (5,)]]
    grads = [
        [rng.normal(size=x.shape).astype("float32") for x in start]
        for _ in range(6)
    ]
    results = []
    for cls in (optimizer_lib.AdamW, KerasUpdate):
        variables = [
            keras.Variable(x, name=n)
            for x, n in zip(start, ["kernel", "bias"], strict=True)
        ]
        optimizer = cls(learning_rate=0.05, weight_decay=0.1, clip_norm=1.0)
        optimizer.build(variables)
        step = _compiled_apply(optimizer, variables)
        for g in grads:
            step(g)
        graph = step.get_concrete_function(grads[0]).graph
        ops = {op.type for op in graph.get_operations()}
        state = [v.numpy() for v in [*variables, *optimizer.variables]]
        results.append((state, ops))
    (fused, fused_ops), (reference, reference_ops) = results
    assert "ResourceApplyAdam" in fused_ops
    assert "ResourceApplyAdam" not in reference_ops
    assert np.abs(fused[0] - start[0]).max() > 0.05  # the weights moved
    assert len(fused) == len(reference) > 4  # weights, step, lr, moments
    for a, b in zip(fused, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_clips_the_global_norm():
    variable = keras.Variable(np.zeros(4, "float32"))
    optimizer = optimizer_lib.AdamW(
        learning_rate=1.0,
        weight_decay=0.0,
        clip_norm=1.0,
        beta_1=0.0,
        beta_2=0.0,
        epsilon=0.0,
    )
    gradient = np.array([3.0, 4.0, 0.0, 0.0], "float32")
    optimizer.apply([gradient], [variable])
    # Adam with zero betas moves each entry by lr * sign; clipping keeps the
    # direction, and the moments hold the clipped gradient (norm 1).
    np.testing.assert_allclose(
        optimizer.variables[2].numpy(), [0.6, 0.8, 0, 0], atol=1e-6
    )


def test_mixed_float16_gets_a_loss_scaler_and_bad_precision_fails():
    optimizer = optimizer_lib.make_optimizer(
        learning_rate=1e-3,
        min_learning_rate=0.0,
        warmup_steps=0,
        total_steps=10,
        precision="mixed_float16",
    )
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, optimizer_lib.AdamW)
    with pytest.raises(ValueError, match="precision"):
        optimizer_lib.make_optimizer(
            learning_rate=1e-3,
            min_learning_rate=0.0,
            warmup_steps=0,
            total_steps=10,
            precision="float16",
        )
