"""Rotary position embedding (RoPE, Su et al. 2021), "rotate half" layout."""

from __future__ import annotations

import keras


def rope_inverse_frequencies(head_dim: int, max_wavelength: float = 10000.0):
    """Inverse frequencies `(head_dim // 2,)` in float32."""
    if head_dim % 2:
        raise ValueError(
            f"Rotary embedding needs an even head size. Received: "
            f"head_dim={head_dim}."
        )
    exponents = keras.ops.arange(0, head_dim, 2, dtype="float32") / head_dim
    return 1.0 / keras.ops.power(float(max_wavelength), exponents)


def rope_tables(positions, head_dim: int, max_wavelength: float = 10000.0):
    """Cosine and sine tables for integer positions.

    Args:
        positions: int tensor of any shape `P`.
        head_dim: `H`, even.
        max_wavelength: the RoPE base.

    Returns:
        `(cos, sin)`, each float32 of shape `P + (H,)`; the two halves of the
        last axis repeat the same `H / 2` frequencies.
    """
    inv_freq = rope_inverse_frequencies(head_dim, max_wavelength)
    angles = keras.ops.cast(positions, "float32")[..., None] * inv_freq
    angles = keras.ops.concatenate([angles, angles], axis=-1)
    return keras.ops.cos(angles), keras.ops.sin(angles)


def apply_rope(x, cos, sin):
    """Rotates `x (..., H)` by the tables from `rope_tables`.

    The first and second halves of the last axis form the (real, imaginary)
    pairs, as in GPT-NeoX and LLaMA's Hugging Face layout.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = keras.ops.concatenate([-x2, x1], axis=-1)
    cos = keras.ops.cast(cos, x.dtype)
    sin = keras.ops.cast(sin, x.dtype)
    return x * cos + rotated * sin
