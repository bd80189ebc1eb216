"""Rotary position embedding (RoPE, Su et al. 2021), "rotate half" layout.

Scaled frequencies (`rope_scaling`, Hugging Face's config field) for
checkpoints trained with them: `{"type": "linear", "factor": f}` divides
every frequency by `f` (positions interpolated); `{"type": "llama3",
"factor", "low_freq_factor", "high_freq_factor",
"original_max_position_embeddings"}` divides the low frequencies by
`factor`, keeps the high ones and blends those between, as Llama 3.1 does.
"""

from __future__ import annotations

import math

import keras

ROPE_SCALING_TYPES = ("linear", "llama3")
_FIELDS = {
    "linear": ("factor",),
    "llama3": (
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    ),
}


def check_rope_scaling(scaling) -> dict | None:
    """`scaling` as a plain dict with `type` and its fields, or `None`.

    Accepts Hugging Face's spelling (`rope_type` for `type`).

    Raises:
        ValueError: an unknown type (named), or a missing or bad field.

    Example:
    >>> check_rope_scaling({"rope_type": "linear", "factor": 2})
    {'type': 'linear', 'factor': 2.0}
    """
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(
            f"rope_scaling must be a dict or None. Received: {scaling!r}."
        )
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind in (None, "default"):
        return None
    if kind not in ROPE_SCALING_TYPES:
        raise ValueError(
            f"rope_scaling type {kind!r} is not supported; tflm applies "
            f"{', '.join(ROPE_SCALING_TYPES)}. Received: {scaling!r}."
        )
    out = {"type": kind}
    for name in _FIELDS[kind]:
        value = scaling.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"rope_scaling of type {kind!r} needs a number {name!r}. "
                f"Received: {scaling!r}."
            )
        if not value > 0:
            raise ValueError(
                f"rope_scaling's {name} must be positive. Received: {value}."
            )
        out[name] = float(value)
    if kind == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError(
            "rope_scaling's high_freq_factor must exceed low_freq_factor. "
            f"Received: {scaling!r}."
        )
    return out


def rope_inverse_frequencies(
    head_dim: int, max_wavelength: float = 10000.0, scaling=None
):
    """Inverse frequencies `(head_dim // 2,)` in float32, scaled by
    `rope_scaling` (see the module docstring) if given."""
    if head_dim % 2:
        raise ValueError(
            f"Rotary embedding needs an even head size. Received: "
            f"head_dim={head_dim}."
        )
    exponents = keras.ops.arange(0, head_dim, 2, dtype="float32") / head_dim
    inv_freq = 1.0 / keras.ops.power(float(max_wavelength), exponents)
    scaling = check_rope_scaling(scaling)
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    if scaling["type"] == "linear":
        return inv_freq / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    scaled = keras.ops.where(
        wavelength > old / low, inv_freq / factor, inv_freq
    )
    smooth = (old / wavelength - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= old / high) & (wavelength <= old / low)
    return keras.ops.where(medium, blended, scaled)


def rope_tables(
    positions, head_dim: int, max_wavelength: float = 10000.0, scaling=None
):
    """Cosine and sine tables for integer positions.

    Args:
        positions: int tensor of any shape `P`.
        head_dim: `H`, even.
        max_wavelength: the RoPE base.
        scaling: optional `rope_scaling` (see the module docstring).

    Returns:
        `(cos, sin)`, each float32 of shape `P + (H,)`; the two halves of the
        last axis repeat the same `H / 2` frequencies.
    """
    inv_freq = rope_inverse_frequencies(head_dim, max_wavelength, scaling)
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
