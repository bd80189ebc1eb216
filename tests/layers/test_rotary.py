import numpy as np
import pytest

from tflm import layers
from tflm.layers import rotary


def test_rope_tables_literal_values():
    cos, sin = layers.rope_tables(np.array([0, 1]), head_dim=4)
    # Frequencies 10000 ** (-2i / 4) for i = 0, 1: 1 and 0.01.
    expected_cos = np.array(
        [
            [1.0, 1.0, 1.0, 1.0],
            [np.cos(1.0), np.cos(0.01), np.cos(1.0), np.cos(0.01)],
        ]
    )
    expected_sin = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [np.sin(1.0), np.sin(0.01), np.sin(1.0), np.sin(0.01)],
        ]
    )
    np.testing.assert_allclose(cos, expected_cos, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sin, expected_sin, rtol=1e-6, atol=1e-7)


def test_rope_tables_general_formula_and_shape():
    positions = np.array([[0, 3, 7], [2, 2, 5]])
    head_dim, base = 8, 500.0
    cos, sin = layers.rope_tables(positions, head_dim, base)
    assert cos.shape == sin.shape == (2, 3, head_dim)
    freqs = base ** (-np.arange(0, head_dim, 2) / head_dim)
    angles = positions[..., None] * freqs
    angles = np.concatenate([angles, angles], axis=-1)
    np.testing.assert_allclose(cos, np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(sin, np.sin(angles), atol=1e-6)


def _numpy_rope(x, positions, base=10000.0):
    half = x.shape[-1] // 2
    freqs = base ** (-np.arange(half) * 2.0 / x.shape[-1])
    angles = positions[:, None] * freqs
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def test_apply_rope_matches_numpy_rotate_half():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype("float32")
    positions = np.arange(5)
    cos, sin = layers.rope_tables(positions, 4)
    out = layers.apply_rope(x, cos, sin)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, _numpy_rope(x, positions), atol=1e-6)


def test_apply_rope_literal_vector():
    x = np.array([[1.0, 2.0, 3.0, 4.0]], "float32")
    cos, sin = layers.rope_tables(np.array([1]), 4)
    out = np.asarray(layers.apply_rope(x, cos, sin))
    c0, s0, c1, s1 = np.cos(1.0), np.sin(1.0), np.cos(0.01), np.sin(0.01)
    expected = [
        [
            1 * c0 - 3 * s0,
            2 * c1 - 4 * s1,
            3 * c0 + 1 * s0,
            4 * c1 + 2 * s1,
        ]
    ]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(2, 8)).astype("float32")

    def score(m, n):
        cos, sin = layers.rope_tables(np.array([m, n]), 8)
        rq = np.asarray(layers.apply_rope(q, cos[0], sin[0]))
        rk = np.asarray(layers.apply_rope(k, cos[1], sin[1]))
        return float(rq @ rk)

    np.testing.assert_allclose(score(5, 2), score(9, 6), rtol=1e-5)
    assert abs(score(5, 2) - score(5, 4)) > 1e-4


def test_odd_head_dim_raises():
    with pytest.raises(ValueError, match="head_dim=3"):
        rotary.rope_inverse_frequencies(3)
