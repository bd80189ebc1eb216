"""Samplers as pure functions of logits, with hand-made distributions."""

import numpy as np
import pytest
import tensorflow as tf

from tflm.generation import samplers

PROBS = np.array([0.5, 0.3, 0.15, 0.05], np.float32)


def _kept(masked):
    return (np.asarray(masked) > -1e29).astype(int).tolist()


def _logits(probs, rows=1):
    return tf.constant(np.log(np.tile(probs, [rows, 1])), tf.float32)


@pytest.mark.parametrize(
    "top_p, expected",
    [
        (0.3, [1, 0, 0, 0]),
        (0.5, [1, 0, 0, 0]),
        (0.6, [1, 1, 0, 0]),
        (0.8, [1, 1, 0, 0]),
        (0.81, [1, 1, 1, 0]),
        (0.95, [1, 1, 1, 0]),
        (0.96, [1, 1, 1, 1]),
        (1.0, [1, 1, 1, 1]),
    ],
)
def test_top_p_mask_keeps_smallest_set_reaching_p(top_p, expected):
    masked = samplers.top_p_mask(_logits(PROBS), tf.constant([top_p]))
    assert _kept(masked) == [expected]


def test_top_p_mask_is_per_row_and_order_independent():
    order = [2, 0, 3, 1]  # probs [0.15, 0.5, 0.05, 0.3]
    logits = tf.constant(np.log(PROBS[order])[None].repeat(3, 0), tf.float32)
    masked = samplers.top_p_mask(logits, tf.constant([0.5, 0.8, 1.0]))
    assert _kept(masked) == [[0, 1, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1]]
    # Kept logits are unchanged.
    kept = np.asarray(masked)[2]
    np.testing.assert_array_equal(kept, np.asarray(logits)[2])


def test_top_k_mask_per_row_with_zero_off():
    logits = tf.constant([[1.0, 4.0, 3.0, 2.0, 0.0]] * 6)
    masked = samplers.top_k_mask(logits, tf.constant([0, 1, 2, 3, 5, 9]))
    assert _kept(masked) == [
        [1, 1, 1, 1, 1],
        [0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ]
    np.testing.assert_array_equal(np.asarray(masked)[0], np.asarray(logits)[0])


def test_sample_mixes_greedy_and_sampled_rows():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=[8, 50]), tf.float32)
    greedy = np.argmax(np.asarray(logits), -1)
    temperature = tf.constant([0.0, 5.0] * 4)
    draws = np.stack(
        [
            samplers.sample(
                logits,
                temperature,
                tf.zeros([8], tf.int32),
                tf.ones([8]),
                tf.range(8),
                step,
            ).numpy()
            for step in range(20)
        ]
    )
    # Greedy rows always take the argmax; hot rows do not.
    np.testing.assert_array_equal(
        draws[:, 0::2], np.tile(greedy[0::2], [20, 1])
    )
    assert (draws[:, 1::2] != greedy[1::2]).any(axis=0).all()
    # A row's draw does not depend on its neighbours.
    alone = samplers.sample(
        logits[1:2],
        temperature[1:2],
        tf.constant([0]),
        tf.constant([1.0]),
        tf.constant([1]),
        3,
    )
    assert alone.numpy()[0] == draws[3, 1]


def test_sample_all_greedy_is_argmax():
    logits = tf.constant([[0.1, 0.9, 0.3], [2.0, -1.0, 1.0]])
    out = samplers.sample(
        logits,
        tf.zeros([2]),
        tf.constant([0, 2]),
        tf.constant([1.0, 0.5]),
        tf.constant([4, 5]),
        0,
    )
    assert out.numpy().tolist() == [1, 0]
    assert out.dtype == tf.int32


def test_uniform_noise_range_determinism_and_uniformity():
    seeds = tf.range(64)
    a = samplers.uniform_noise(seeds, 3, 1000).numpy()
    assert a.shape == (64, 1000)
    assert (a > 0).all() and (a < 1).all()
    np.testing.assert_array_equal(a, samplers.uniform_noise(seeds, 3, 1000))
    other_step = samplers.uniform_noise(seeds, 4, 1000).numpy()
    other_seed = samplers.uniform_noise(seeds + 1000, 3, 1000).numpy()
    assert np.mean(a == other_step) < 1e-3
    assert np.mean(a == other_seed) < 1e-3
    # Seeds are independent across rows: row i of seeds i and i+1 differ.
    assert np.mean(a[1:] == a[:-1]) < 1e-3
    assert abs(a.mean() - 0.5) < 0.01
    assert abs(a.std() - np.sqrt(1 / 12)) < 0.01
    hist = np.histogram(a, bins=10, range=(0, 1))[0] / a.size
    np.testing.assert_allclose(hist, 0.1, atol=0.01)
    # Extreme seeds and steps stay in range.
    edge = samplers.uniform_noise(
        tf.constant([0, -1, 2**31 - 1, -(2**31)]), 2**31 - 1, 259
    ).numpy()
    assert (edge > 0).all() and (edge < 1).all()


def _frequencies(logits, temperature=1.0, top_k=0, top_p=1.0, n=4000):
    batch = tf.tile(tf.constant([logits], tf.float32), [n, 1])
    drawn = samplers.sample(
        batch,
        tf.fill([n], temperature),
        tf.fill([n], top_k),
        tf.fill([n], top_p),
        tf.range(n),
        7,
    ).numpy()
    return np.bincount(drawn, minlength=len(logits)), n


def _chi_square(counts, probs, n):
    expected = np.asarray(probs) * n
    nonzero = expected > 0
    assert (counts[~nonzero] == 0).all(), counts
    return float(((counts - expected)[nonzero] ** 2 / expected[nonzero]).sum())


# 99.9% quantiles of chi-square with 3, 2 and 1 degrees of freedom.
CHI2_3, CHI2_2, CHI2_1 = 16.27, 13.82, 10.83


def test_sampling_frequencies_match_softmax():
    logits = np.log(PROBS)
    counts, n = _frequencies(logits)
    assert _chi_square(counts, PROBS, n) < CHI2_3, counts


def test_sampling_frequencies_with_temperature():
    logits = np.log(PROBS)
    probs = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum()
    counts, n = _frequencies(logits, temperature=2.0)
    assert _chi_square(counts, probs, n) < CHI2_3, counts
    # And clearly not the untempered distribution.
    assert _chi_square(counts, PROBS, n) > 10 * CHI2_3


def test_sampling_frequencies_with_top_k_and_top_p():
    logits = np.log(PROBS)
    counts, n = _frequencies(logits, top_k=3)
    probs = np.append(PROBS[:3] / PROBS[:3].sum(), 0)
    assert _chi_square(counts, probs, n) < CHI2_2, counts
    counts, n = _frequencies(logits, top_p=0.8)
    probs = np.array([0.5, 0.3, 0, 0]) / 0.8
    assert _chi_square(counts, probs, n) < CHI2_1, counts
