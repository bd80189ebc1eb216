"""Beam search (`tflm.generation.beam`) on tiny random models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm import errors
from tflm.generation import beam
from tflm.generation import loop
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers.byte import ByteTokenizer

PROMPT = [40, 75, 101, 60, 90]
STEPS = 8


@pytest.fixture(scope="module")
def lm():
    """Large random weights and an untied head, so that beams differ."""
    keras.utils.set_random_seed(0)
    model = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=32,
        tie_embeddings=False,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for v in model.weights:
        if len(v.shape) == 2:
            std = 1.0 if "embedding" in v.path else 1.5 / np.sqrt(v.shape[0])
            v.assign(rng.normal(0, std, v.shape).astype("float32"))
    model.tokenizer = ByteTokenizer()
    return model


def _logprob_sum(lm, prompt, tokens):
    ids = np.array([prompt + tokens], "int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    logp = np.asarray(tf.nn.log_softmax(lm(x)[0], axis=-1))
    return sum(
        logp[len(prompt) + j - 1, t] for j, t in enumerate(tokens)
    )  # fmt: skip


@pytest.mark.parametrize("jit_compile", [False, True])
def test_one_beam_is_greedy(lm, jit_compile):
    greedy = lm.generate(PROMPT, STEPS, jit_compile=jit_compile)
    assert lm.generate(PROMPT, STEPS, num_beams=1) == greedy
    # The beam machinery itself (cache reordering) with one beam.
    ids = tf.constant([PROMPT], tf.int32)
    settings = loop.LoopSettings.make([STEPS])
    decoding = lm.decoding()
    cache = decoding.init_cache(1, len(PROMPT) + STEPS)
    beams = beam.Beams(1, 1, tf.constant([1.0]), tf.constant([False]))
    found = beam.generate(
        decoding, cache, ids, tf.ones_like(ids), settings, beams
    )
    assert found.out.token_ids.numpy()[0].tolist() == greedy


@pytest.mark.parametrize("length_penalty", [1.0, 0.6])
def test_beams_sorted_and_scores_are_log_prob_sums(lm, length_penalty):
    eos = lm.tokenizer.eos_id
    out = lm.generate(
        [PROMPT, [7, 8, 9]], STEPS, num_beams=4, num_return_sequences=3,
        length_penalty=length_penalty, return_details=True, jit_compile=False,
    )  # fmt: skip
    assert out["prompt_index"] == [0, 0, 0, 1, 1, 1]
    scores = np.array(out["score"]).reshape(2, 3)
    assert (np.diff(scores, axis=1) <= 0).all()
    rows = [tuple(r) for r in out["token_ids"]]
    assert len(set(rows[:3])) == 3
    for row, n, why, score, p in zip(
        out["token_ids"], out["num_tokens"], out["stop_reason"],
        out["score"], out["prompt_index"], strict=True,
    ):  # fmt: skip
        tokens = row + ([eos] if why == "eos" else [])
        prompt = [PROMPT, [7, 8, 9]][p]
        expected = _logprob_sum(lm, prompt, tokens)
        expected /= len(tokens) ** length_penalty
        np.testing.assert_allclose(score, expected, rtol=1e-4, atol=1e-4)
        assert why == "eos" or n == STEPS


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 2.5}, "num_beams"),
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"num_beams": 2, "temperature": 0.7}, "temperature"),
        ({"num_beams": 2, "stop": ["x"]}, "stop"),
        ({"num_beams": 2, "length_penalty": float("nan")}, "length_penalty"),
        ({"num_beams": 2, "early_stopping": "never"}, "early_stopping"),
    ],
)
def test_bad_beam_settings_raise_input_error(lm, kwargs, match):
    with pytest.raises(errors.InputError, match=match):
        lm.generate(PROMPT, STEPS, **kwargs)
