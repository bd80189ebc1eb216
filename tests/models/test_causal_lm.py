import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.models import Backbone
from tflm.models import CausalLM

B, T, V = 2, 8, 32

# Shrunken presets: one per family, plus single-axis variations of the block.
FAMILIES = {
    "gpt2": dict(),
    "llama": dict(
        num_heads=4,
        num_key_value_heads=2,
        hidden_dim=16,
        norm="rmsnorm",
        activation="swiglu",
        position_embedding="rotary",
        use_bias=False,
        tie_embeddings=False,
    ),
}
CACHE_CASES = {
    **FAMILIES,
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(activation="swiglu"),
    "rotary": dict(position_embedding="rotary"),
    "mqa": dict(num_key_value_heads=1),
    "gqa_learned": dict(num_heads=4, num_key_value_heads=2, hidden_dim=16),
    "unfused": dict(fused_qkv=False),
    "llama_unfused": dict(FAMILIES["llama"], fused_qkv=False),
    "mqa_rotary_unfused": dict(
        num_key_value_heads=1, position_embedding="rotary", fused_qkv=False
    ),
}


def _lm(**overrides):
    return CausalLM.from_preset("tiny", **overrides)


def _ids(seed=0, shape=(B, T)):
    rng = np.random.default_rng(seed)
    return rng.integers(1, V, shape).astype("int32")


def _inputs(ids, mask=None):
    mask = np.ones_like(ids) if mask is None else mask
    return {"token_ids": ids, "padding_mask": mask.astype("int32")}


def _logits(lm, ids, mask=None):
    return np.asarray(lm(_inputs(ids, mask)))


def _config_json(model):
    return json.dumps(model.get_config(), sort_keys=True)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_shape_and_dtype(family):
    logits = _lm(**FAMILIES[family])(_inputs(_ids()))
    assert logits.shape == (B, T, V)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_round_trip(family):
    lm = _lm(**FAMILIES[family])
    restored = CausalLM.from_config(lm.get_config())
    assert _config_json(restored) == _config_json(lm)
    assert isinstance(restored.backbone, Backbone)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_keras_save_and_load(family, tmp_path):
    lm = _lm(**FAMILIES[family])
    ids = _ids()
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, CausalLM)
    np.testing.assert_array_equal(_logits(restored, ids), _logits(lm, ids))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_causality(family):
    lm = _lm(**FAMILIES[family])
    ids = _ids()
    t = 3
    changed = ids.copy()
    changed[:, t] = (changed[:, t] + 7) % V
    before, after = _logits(lm, ids), _logits(lm, changed)
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert (np.abs(before[:, t:] - after[:, t:]).max(axis=-1) > 1e-7).all()


@pytest.mark.parametrize("position_embedding", ["learned", "rotary"])
def test_right_padding_does_not_change_real_positions(position_embedding):
    lm = _lm(position_embedding=position_embedding)
    ids = _ids()
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3])
    changed = ids.copy()
    changed[1, 5:] = [3, 4, 5]
    out, out_changed = _logits(lm, ids, mask), _logits(lm, changed, mask)
    np.testing.assert_array_equal(out[0], out_changed[0])
    np.testing.assert_array_equal(out[1, :5], out_changed[1, :5])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_left_padding_matches_unpadded_row(family):
    lm = _lm(**FAMILIES[family])
    ids = _ids()
    pad = 3
    padded = ids.copy()
    padded[1, :pad] = 0
    mask = np.ones_like(ids)
    mask[1, :pad] = 0
    batched = _logits(lm, padded, mask)
    alone = _logits(lm, ids[1:, pad:])
    np.testing.assert_allclose(batched[1, pad:], alone[0], atol=1e-5)
    np.testing.assert_allclose(batched[0], _logits(lm, ids[:1])[0], atol=1e-5)


def _step(lm, ids, cache, index, mask, positions):
    logits, hidden, cache = lm.call_with_cache(
        ids, cache, index, mask.astype("int32"), positions.astype("int32")
    )
    assert hidden.shape == ids.shape + (lm.backbone.hidden_dim,)
    return np.asarray(logits), cache


def _decode(lm, ids, prefill=0):
    batch, length = ids.shape
    cache = lm.backbone.init_cache(batch, length)
    outs = []
    start = max(prefill, 1)
    slots = np.arange(length)
    positions = np.tile(slots, (batch, 1))
    mask = np.tile(slots < start, (batch, 1))
    logits, cache = _step(
        lm, ids[:, :start], cache, 0, mask, positions[:, :start]
    )
    outs.append(logits)
    for i in range(start, length):
        mask = np.tile(slots <= i, (batch, 1))
        logits, cache = _step(
            lm, ids[:, i : i + 1], cache, i, mask, positions[:, i : i + 1]
        )
        outs.append(logits)
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_cached_decoding_matches_full_pass(case):
    lm = _lm(**CACHE_CASES[case])
    ids = _ids()
    np.testing.assert_allclose(_decode(lm, ids), _logits(lm, ids), atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefill_then_steps_matches_full_pass(family):
    lm = _lm(**FAMILIES[family])
    ids = _ids()
    np.testing.assert_allclose(
        _decode(lm, ids, prefill=5), _logits(lm, ids), atol=1e-5
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_left_padded_batch_matches_rows_alone(family):
    lm = _lm(**FAMILIES[family])
    lengths, prompt, steps = [5, 2], 5, 3
    cache_length = prompt + steps
    rows = [_ids(seed=i, shape=(n + steps,)) for i, n in enumerate(lengths)]
    ids = np.zeros((2, cache_length), "int32")
    mask = np.zeros((2, cache_length), "int32")
    positions = np.zeros((2, cache_length), "int32")
    for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        ids[b, prompt - n :] = row
        mask[b, prompt - n :] = 1
        positions[b, prompt - n :] = np.arange(n + steps)
    cache = lm.backbone.init_cache(2, cache_length)
    logits, cache = _step(
        lm, ids[:, :prompt], cache, 0, mask, positions[:, :prompt]
    )
    outs = [logits]
    for i in range(prompt, cache_length):
        logits, cache = _step(
            lm, ids[:, i : i + 1], cache, i, mask, positions[:, i : i + 1]
        )
        outs.append(logits)
    batched = np.concatenate(outs, axis=1)
    for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        alone = _logits(lm, row[None])[0]
        np.testing.assert_allclose(batched[b, prompt - n :], alone, atol=1e-5)


def test_fit_lowers_loss_on_repeated_batch():
    lm = _lm()
    lm.compile()
    ids = _ids(shape=(4, T + 1))
    x, y = _inputs(ids[:, :-1]), ids[:, 1:]
    history = lm.fit(x, y, epochs=5, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    assert 0.0 <= history.history["accuracy"][-1] <= 1.0


def _mixed_fit_check(lm):
    logits = lm(_inputs(_ids()))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(np.asarray(logits)).all()
    block = lm.backbone.blocks[0]
    assert block.compute_dtype == "bfloat16"
    assert block.attention.output_dense.kernel.dtype == "float32"
    lm.compile(run_eagerly=True)  # one eager step keeps the test fast
    ids = _ids(shape=(2, T + 1))
    history = lm.fit(_inputs(ids[:, :-1]), ids[:, 1:], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_mixed_precision_global_policy():
    keras.config.set_dtype_policy("mixed_bfloat16")
    _mixed_fit_check(CausalLM.from_preset("tiny"))


def test_mixed_precision_dtype_argument():
    lm = CausalLM.from_preset("tiny", dtype="mixed_bfloat16")
    _mixed_fit_check(lm)


def test_mixed_precision_survives_save_and_load(tmp_path):
    lm = CausalLM.from_preset("tiny", dtype="mixed_bfloat16")
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    restored = keras.models.load_model(path)
    assert restored.backbone.blocks[0].compute_dtype == "bfloat16"
    ids = _ids()
    np.testing.assert_array_equal(_logits(restored, ids), _logits(lm, ids))


def test_mixed_precision_cached_decoding_close_to_full_pass():
    lm = CausalLM.from_preset("tiny", dtype="mixed_bfloat16")
    ids = _ids()
    np.testing.assert_allclose(_decode(lm, ids), _logits(lm, ids), atol=2e-2)


@pytest.mark.parametrize("training", [True, False])
def test_mixed_precision_head_multiplies_in_bfloat16_inside_the_model(
    training,
):
    # Keras' embeddings skip autocast when called inside another layer that
    # autocasts: under a global mixed policy (the CausalLM's own too), the
    # tied head ran in float32 inside the CausalLM, though in bfloat16 when
    # called alone.
    keras.config.set_dtype_policy("mixed_bfloat16")
    lm = CausalLM.from_preset("tiny")
    assert lm.dtype_policy.name == "mixed_bfloat16"
    x = {
        "token_ids": tf.constant(_ids()),
        "padding_mask": tf.ones(_ids().shape, tf.int32),
    }
    fn = tf.function(lambda: lm(x, training=training), autograph=False)
    graph = fn.get_concrete_function().graph
    heads = [
        op.get_attr("T").name
        for op in graph.get_operations()
        if op.type == "MatMul" and "token_embedding" in op.name
    ]
    assert heads == ["bfloat16"]
    logits = lm(x, training=training)
    assert logits.dtype == tf.float32
    hidden = lm.backbone(x, training=training)
    alone = lm.backbone.token_embedding(hidden, reverse=True)
    np.testing.assert_array_equal(logits, tf.cast(alone, tf.float32))


def _check_decay(lm, optimizer, expected_kinds):
    # Decay applies to matmul kernels (an untied output head is one): not to
    # biases, norms or input embeddings.
    kinds = set()
    for variable in lm.trainable_variables:
        kind = variable.path.split("/")[-1]
        kinds.add(kind)
        decayed = optimizer._use_weight_decay(variable)
        expected = kind in ("kernel", "reverse_embeddings")
        assert decayed == expected, variable.path
    assert kinds == expected_kinds


@pytest.mark.parametrize(
    "family, kinds",
    [
        ("gpt2", {"kernel", "bias", "gamma", "beta", "embeddings"}),
        ("llama", {"kernel", "scale", "embeddings", "reverse_embeddings"}),
    ],
)
def test_default_optimizer_excludes_non_kernels_from_decay(family, kinds):
    lm = _lm(**FAMILIES[family])
    lm.compile(jit_compile=False)
    lm.optimizer.build(lm.trainable_variables)
    assert isinstance(lm.optimizer, keras.optimizers.AdamW)
    assert lm.optimizer.weight_decay == pytest.approx(0.1)
    _check_decay(lm, lm.optimizer, kinds)


def test_weight_decay_exclusion_survives_save_and_load(tmp_path):
    lm = _lm()
    lm.compile(jit_compile=False)
    lm.optimizer.build(lm.trainable_variables)
    path = str(tmp_path / "lm.keras")
    lm.save(path)
    restored = keras.models.load_model(path)
    assert restored.optimizer.built
    kinds = {"kernel", "bias", "gamma", "beta", "embeddings"}
    _check_decay(restored, restored.optimizer, kinds)
