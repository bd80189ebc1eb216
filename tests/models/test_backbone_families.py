"""What Llama-family checkpoints need of the backbone, as constructor
arguments: an explicit head size, biases per projection and scaled rotary
frequencies."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tflm.layers import rotary
from tflm.models import Backbone
from tflm.models import CausalLM
from tflm.tokenizers import ByteTokenizer

LLAMA = dict(
    position_embedding="rotary",
    norm="rmsnorm",
    activation="swiglu",
    use_bias=False,
    fused_qkv=False,
    num_key_value_heads=1,
    tie_embeddings=False,
)


def _hf_llama3(inv_freq, factor, low, high, old):
    """Llama 3.1's frequency rule, written from its definition."""
    out = []
    for f in inv_freq:
        wavelength = 2 * math.pi / f
        if wavelength < old / high:
            out.append(f)
        elif wavelength > old / low:
            out.append(f / factor)
        else:
            smooth = (old / wavelength - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


def test_llama3_and_linear_rope_scaling():
    base = np.asarray(rotary.rope_inverse_frequencies(64, 500000.0))
    llama3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    got = np.asarray(rotary.rope_inverse_frequencies(64, 500000.0, llama3))
    want = _hf_llama3(base, 8.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # All three regimes occur at these settings.
    assert (got == base).any() and np.isclose(got, base / 8).any()
    assert ((got < base) & ~np.isclose(got, base / 8)).any()
    linear = {"type": "linear", "factor": 4}
    got = np.asarray(rotary.rope_inverse_frequencies(64, 10000.0, linear))
    base = np.asarray(rotary.rope_inverse_frequencies(64, 10000.0))
    np.testing.assert_allclose(got, base / 4, rtol=1e-7)


@pytest.mark.parametrize(
    "scaling, match",
    [
        ({"type": "yarn", "factor": 4.0}, "'yarn' is not supported"),
        ({"type": "linear"}, "needs a number 'factor'"),
        ({"type": "linear", "factor": -1}, "must be positive"),
        ("linear", "must be a dict"),
    ],
)
def test_bad_rope_scaling_is_refused_by_name(scaling, match):
    with pytest.raises(ValueError, match=match):
        Backbone.from_preset("tiny", **LLAMA, rope_scaling=scaling)


def _model(**overrides):
    model = CausalLM.from_preset(
        "tiny", vocabulary_size=260, **{**LLAMA, **overrides}
    )
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    model.tokenizer = ByteTokenizer()
    return model


ARGS = dict(
    head_dim=6,  # not hidden (8) / heads (2)
    qkv_bias=True,  # Qwen2: q/k/v biases, none elsewhere
    rope_scaling={"type": "linear", "factor": 2.0},
)


def test_head_size_biases_and_scaling_are_constructor_arguments():
    model = _model(**ARGS)
    backbone = model.backbone
    attention = backbone.blocks[0].attention
    assert attention.query.kernel.shape == (8, 12)
    assert attention.key.kernel.shape == (8, 6)
    assert attention.output_dense.kernel.shape == (12, 8)
    assert attention.query.bias is not None
    assert attention.output_dense.bias is None
    assert backbone.blocks[0].mlp_in.bias is None
    assert backbone.init_cache(1, 4)[0].shape == (2, 1, 1, 4, 6)
    config = backbone.get_config()
    assert config["head_dim"] == 6 and config["qkv_bias"] is True
    again = Backbone.from_config(json.loads(json.dumps(config)))
    assert json.dumps(again.get_config(), sort_keys=True) == json.dumps(
        config, sort_keys=True
    )


def test_cached_steps_equal_the_full_forward():
    model = _model(**ARGS)
    ids = np.array([[3, 70, 101, 9, 44, 12]], "int32")
    full = model({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    cache = model.backbone.init_cache(1, ids.shape[1])
    for t in range(ids.shape[1]):
        logits, _, cache = model.call_with_cache(
            ids[:, t : t + 1],
            cache,
            t,
            np.ones((1, ids.shape[1]), "int32"),
            np.array([[t]], "int32"),
        )
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-4)


def test_scaling_changes_the_logits():
    plain = _model(head_dim=6)
    scaled = _model(head_dim=6, rope_scaling={"type": "linear", "factor": 2})
    ids = np.array([[3, 70, 101, 9, 44, 12]], "int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    # Position 0 is not rotated; later ones are, by other angles.
    np.testing.assert_allclose(plain(x)[:, 0], scaled(x)[:, 0], atol=1e-5)
    assert not np.allclose(plain(x)[:, -1], scaled(x)[:, -1], atol=1e-3)


def test_generation_and_the_export_run_such_a_model(tmp_path):
    from tflm import export as export_lib

    model = _model(**ARGS)
    prompts = ["Hello", "ab"]
    expected = model.generate(prompts, max_new_tokens=6, jit_compile=False)
    assert model.generate(prompts, max_new_tokens=6) == expected
    path = export_lib.export(model, str(tmp_path), warmup=False)
    served = tf.saved_model.load(path).signatures["serving_default"](
        prompt=tf.constant(prompts),
        max_new_tokens=tf.fill([2], 6),
        temperature=tf.zeros([2]),
        top_k=tf.zeros([2], tf.int32),
        top_p=tf.ones([2]),
        seed=tf.zeros([2], tf.int32),
    )
    text = [t.decode("utf-8", "replace") for t in served["text"].numpy()]
    assert text == expected
