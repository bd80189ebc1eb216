"""Beam search settings: checked in Python (`InputError`) and in the graph.

`num_beams` (int `>= 1`; 1 is the ordinary loop, unchanged),
`length_penalty` (finite float, HF's exponent on the length; default 1.0)
and `early_stopping` (bool, HF's True/False; default False). With
`num_beams > 1`, `num_return_sequences` must be in `[1, num_beams]`, and
beam search is deterministic: sampling (`temperature > 0`, `top_k`,
`top_p`), the logits processors and stop strings or ids are refused rather
than silently ignored (Hugging Face's beam sampling is not supported).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tflm import errors

DEFAULTS = {"num_beams": 1, "length_penalty": 1.0, "early_stopping": False}
# Settings beam search does not apply, with their "off" values.
_NOT_WITH_BEAMS = {
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
}


def pop_beam_settings(kw: dict) -> dict | None:
    """Removes the beam settings from `kw`; `None` unless `num_beams > 1`."""
    given = {k: kw.pop(k) for k in DEFAULTS if k in kw}
    values = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    n = values["num_beams"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise errors.InputError(
            f"num_beams must be an int >= 1. Received: num_beams={n!r}."
        )
    lp = values["length_penalty"]
    if isinstance(lp, bool) or not isinstance(lp, (int, float)):
        raise errors.InputError(
            f"length_penalty must be a float. Received: length_penalty={lp!r}."
        )
    if not math.isfinite(lp):
        raise errors.InputError(
            f"length_penalty must be finite. Received: length_penalty={lp!r}."
        )
    if not isinstance(values["early_stopping"], (bool, np.bool_)):
        raise errors.InputError(
            "early_stopping must be True or False. Received: "
            f"early_stopping={values['early_stopping']!r}."
        )
    if n == 1:
        return None
    nrs = kw.get("num_return_sequences")
    nrs = 1 if nrs is None else nrs
    if isinstance(nrs, bool) or not isinstance(nrs, (int, np.integer)):
        raise errors.InputError(
            "num_return_sequences must be an int with beam search. "
            f"Received: num_return_sequences={nrs!r}."
        )
    if not 1 <= nrs <= n:
        raise errors.InputError(
            "num_return_sequences must be in [1, num_beams] with beam "
            f"search. Received: num_return_sequences={nrs}, num_beams={n}."
        )
    return {**values, "num_return_sequences": int(nrs)}


def check_beam_compatible(kw: dict) -> None:
    """Raises `InputError` for settings beam search would not apply."""
    for name, off in _NOT_WITH_BEAMS.items():
        value = kw.get(name)
        if value is not None and np.any(np.asarray(value) != off):
            raise errors.InputError(
                f"{name} is not supported with beam search (num_beams > 1); "
                f"leave it at {off}. Received: {name}={value!r}."
            )
    if kw.get("stop"):
        raise errors.InputError(
            "stop is not supported with beam search (num_beams > 1); beams "
            f"end at end-of-text or the length. Received: stop={kw['stop']!r}."
        )


def batched(beams: dict, batch: int) -> dict:
    """The beam settings as the graph takes them."""
    return {
        "num_beams": int(beams["num_beams"]),
        "num_return_sequences": int(beams["num_return_sequences"]),
        "length_penalty": tf.fill([batch], float(beams["length_penalty"])),
        "early_stopping": tf.fill([batch], bool(beams["early_stopping"])),
    }


def graph_checks(inputs: dict, batch) -> list:
    """In-graph asserts for the `beam_search` signature; messages name the
    input (TF Serving answers `InvalidArgument`)."""
    n, k = inputs["num_beams"], inputs["num_return_sequences"]
    lp = inputs["length_penalty"]
    checks = [
        _assert(
            tf.equal(tf.shape(value)[0], batch),
            f"{name} needs one value per prompt (the same dimension 0 as "
            "prompt)",
        )
        for name, value in inputs.items()
    ]
    with tf.control_dependencies(checks):
        checks += [
            _assert(tf.reduce_all(n >= 1), "num_beams must be >= 1"),
            _assert(
                tf.reduce_all(tf.equal(n, n[:1])),
                "num_beams must be the same for every prompt",
            ),
            _assert(
                tf.reduce_all((k >= 1) & (k <= n)),
                "num_return_sequences must be in [1, num_beams]",
            ),
            _assert(
                tf.reduce_all(tf.equal(k, k[:1])),
                "num_return_sequences must be the same for every prompt",
            ),
            _assert(
                tf.reduce_all(tf.math.is_finite(lp)),
                "length_penalty must be finite",
            ),
        ]
    return checks


def _assert(condition, message):
    return tf.debugging.Assert(condition, [message])
