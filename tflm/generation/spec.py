"""The generation spec: every control of a request, checked in Python and
in the graph, and every exported signature's inputs.

Each per-row setting has a name, a dtype, a default and a rule written once
as a TensorFlow predicate. `CausalLM.generate` runs the rule eagerly on the
user's values and raises `InputError`; an exported signature runs the same
rule in its graph (`tf.debugging.Assert`), so a bad request fails with an
`InvalidArgument` error whose message names the input. Names and meanings
follow Hugging Face `generate` where it has the control.

Length rule (in-process and served alike): `max_new_tokens` or
`max_length` (prompt tokens + new tokens, as in Hugging Face), never both;
neither gives `min(DEFAULT_MAX_NEW_TOKENS, context - 1)`. The prompt comes
first: it is kept whole, and the new tokens are capped at the room it leaves
in the context (`fit_context`); only a prompt that alone fills the context is
cut from the left, to its last `context - 1` tokens, leaving room for one.

Beam search (`BEAM_SPEC`): `num_beams` (1 is the sampling loop),
`length_penalty` (HF's exponent on the length) and `early_stopping` (HF's
True/False). With `num_beams > 1`, `num_return_sequences` must be in
`[1, num_beams]`, and sampling, the logits processors and stops are
refused rather than silently ignored.

Size caps: a request decodes `prompts * num_return_sequences` rows
(`prompts * num_beams` in beam search), at most `MAX_DECODE_ROWS`, and
`no_repeat_ngram_size` is at most the context (`limit_checks`, before anything
is tokenized). Each row holds a KV cache as long as the longest kept prompt
plus the most new tokens; rows times that length ("decode cells") is at most
`MAX_DECODE_CELLS` (`cells_check`, once the prompts are tokenized and cut to
the context, before anything is padded into a dense tensor). The products are
int64 values that saturate (no int32 overflow); `export/README.md`'s "Limits"
gives the memory they allow.

`SIGNATURES` names each exported signature's inputs; `input_specs(name)`
derives their `tf.TensorSpec`s from this spec, so no signature writes a
dtype by hand.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tflm import errors

DEFAULT_MAX_NEW_TOKENS = 64
MAX_STOP_STRINGS = 8  # per row
MAX_STOP_BYTES = 64  # per stop string
MAX_STOP_IDS = 16  # per row
UNSET = -1  # `max_new_tokens` / `max_length` not given
MAX_DECODE_ROWS = 4096  # prompts x samples (or beams) in one request
MAX_DECODE_CELLS = 2**17  # decode rows x (longest kept prompt + new tokens)
CELLS_RULE = "the decode cells of one request"  # in `cells_check`'s message


@dataclasses.dataclass(frozen=True)
class Setting:
    """One per-row control: int32 or float32 `[B]`."""

    name: str
    dtype: tf.DType
    default: float | int
    valid: Callable  # tensor -> bool tensor, true where valid
    rule: str  # what `valid` means, for messages


def _finite(x):
    return tf.math.is_finite(x)


SPEC = (
    Setting(
        "max_new_tokens", tf.int32, UNSET, lambda x: x >= UNSET,
        ">= 0 (-1: not given)",
    ),
    Setting(
        "max_length", tf.int32, UNSET, lambda x: x >= UNSET,
        ">= 0, prompt tokens included (-1: not given)",
    ),
    Setting(
        "min_new_tokens", tf.int32, 0, lambda x: x >= 0,
        ">= 0 (end-of-text and stop ids are banned before it)",
    ),
    Setting(
        "temperature", tf.float32, 0.0, lambda x: (x >= 0) & _finite(x),
        "finite and >= 0 (0 is greedy)",
    ),
    Setting("top_k", tf.int32, 0, lambda x: x >= 0, ">= 0 (0 is off)"),
    Setting(
        "top_p", tf.float32, 1.0, lambda x: (x > 0) & (x <= 1),
        "in (0, 1] (1 is off)",
    ),
    Setting("seed", tf.int32, 0, lambda x: tf.ones_like(x, tf.bool), "int32"),
    Setting(
        "repetition_penalty", tf.float32, 1.0,
        lambda x: (x > 0) & _finite(x), "finite and > 0 (1 is off)",
    ),
    Setting(
        "no_repeat_ngram_size", tf.int32, 0, lambda x: x >= 0,
        ">= 0 (0 is off)",
    ),
    Setting(
        "num_return_sequences", tf.int32, 1, lambda x: x >= 1,
        ">= 1, the same for every prompt",
    ),
)  # fmt: skip
BY_NAME = {s.name: s for s in SPEC}
# A request's settings, every one `[B]`, in `SPEC`'s order.
Settings = NamedTuple("Settings", [(s.name, tf.Tensor) for s in SPEC])
# The settings `serving_default` takes (its inputs never change).
SERVING_DEFAULT = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")

BEAM_SPEC = (
    Setting("num_beams", tf.int32, 1, lambda x: x >= 1, ">= 1"),
    Setting(
        "length_penalty", tf.float32, 1.0, _finite, "finite",
    ),
    Setting(
        "early_stopping", tf.bool, False,
        lambda x: tf.ones_like(x, tf.bool), "a bool",
    ),
)  # fmt: skip
BEAM_BY_NAME = {s.name: s for s in BEAM_SPEC}
# Every setting a signature may take.
ALL_SETTINGS = (*BY_NAME, *BEAM_BY_NAME)
# Settings beam search does not apply, with their "off" values.
NOT_WITH_BEAMS = {
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": 0,
}

# Prompt forms and the other inputs signatures take: (shape, dtype).
_INPUTS = {
    "prompt": ([None], tf.string),
    "text": ([None], tf.string),
    "role": ([None, None], tf.string),
    "content": ([None, None], tf.string),
    "stop": ([None, None], tf.string),
    "stop_ids": ([None, None], tf.int32),
    "token_ids": ([None, None], tf.int32),
    "num_tokens": ([None], tf.int32),
    **{s.name: ([None], s.dtype) for s in (*SPEC, *BEAM_SPEC)},
}
# Every exported signature's inputs, in order (the serving contract).
SIGNATURES = {
    "serving_default": ("prompt", *SERVING_DEFAULT),
    "generate": ("prompt", *BY_NAME, "stop", "stop_ids"),
    "beam_search": (
        "prompt",
        "max_new_tokens",
        "max_length",
        "num_beams",
        "num_return_sequences",
        "length_penalty",
        "early_stopping",
    ),
    "chat": ("role", "content", *SERVING_DEFAULT),
    "score": ("text",),
    "tokenize": ("text",),
    "detokenize": ("token_ids", "num_tokens"),
}


def signature_names(template: bool) -> list[str]:
    """The signatures an export has: `chat` only with a template.

    Example:
    >>> "chat" in signature_names(False), "chat" in signature_names(True)
    (False, True)
    """
    return [name for name in SIGNATURES if name != "chat" or template]


def input_specs(signature: str) -> list:
    """The `tf.TensorSpec`s of a signature's inputs, named and in order.

    Example:
    >>> [s.name for s in input_specs("score")]
    ['text']
    """
    return [
        tf.TensorSpec(_INPUTS[n][0], _INPUTS[n][1], n)
        for n in SIGNATURES[signature]
    ]


def cross_checks(values: dict) -> list[tuple]:
    """`(bool scalar, input names, message)` for rules across settings."""
    n = values["num_return_sequences"]
    both = (values["max_new_tokens"] != UNSET) & (values["max_length"] != UNSET)
    return [
        (
            tf.logical_not(tf.reduce_any(both)),
            "max_new_tokens, max_length",
            "max_new_tokens and max_length are both given; give one of them "
            f"(the other {UNSET})",
        ),
        (
            tf.reduce_all(tf.equal(n, n[:1])),
            "num_return_sequences",
            "num_return_sequences must be the same for every prompt",
        ),
    ]


_PER_PROMPT = ("num_beams", "num_return_sequences")


def limit_checks(
    values: dict, batch, context: int, prompts: str = "prompt"
) -> list[tuple]:
    """`(bool scalar, input names, message)` for the caps on a request's
    size.

    Args:
        values: the request's settings `[B]`; `num_return_sequences` and
            `num_beams` (beam search), where given, count the rows decoded
            per prompt, and `no_repeat_ngram_size` must fit the context.
        batch: int32 scalar, the number of prompts.
        context: the model's context length.
        prompts: the input that holds the prompts, for messages.

    Example:
    >>> beams = {"num_beams": tf.constant([3000, 3000])}  # 6000 rows
    >>> [bool(ok) for ok, _, _ in limit_checks(beams, 2, 1024)]
    [False]
    """
    # Beam search decodes `num_beams` rows a prompt and returns some of them.
    per_prompt = [n for n in _PER_PROMPT if n in values][:1]
    label = " * ".join([f"{prompts} rows", *per_prompt])
    big = tf.constant(MAX_DECODE_ROWS + 1, tf.int64)  # saturates: no overflow
    rows = tf.minimum(tf.cast(batch, tf.int64), big)
    for name in per_prompt:
        most = tf.reduce_max(tf.concat([values[name], [1]], 0))
        rows = tf.minimum(rows * tf.minimum(tf.cast(most, tf.int64), big), big)
    names = (prompts, *per_prompt)
    checks = [
        (
            rows <= MAX_DECODE_ROWS,
            names,
            f"{label} must be at most {MAX_DECODE_ROWS} (the rows decoded "
            "in one request); split the request",
        ),
    ]
    if "no_repeat_ngram_size" in values:
        checks.append(
            (
                tf.reduce_all(values["no_repeat_ngram_size"] <= context),
                ("no_repeat_ngram_size",),
                f"no_repeat_ngram_size must be at most the context ({context})",
            )
        )
    return checks


def cells_check(rows, width, label: str) -> tuple:
    """`(bool scalar, message)`: `rows` decoded rows, each `width` tokens
    long (the longest kept prompt plus the most new tokens), fit
    `MAX_DECODE_CELLS`.

    Example:
    >>> ok, message = cells_check(129, 1024, "rows")
    >>> bool(ok), message.split(" (the")[0]
    (False, 'rows * (longest prompt + new tokens) must be at most 131072')
    """
    cells = tf.cast(rows, tf.int64) * tf.cast(width, tf.int64)
    return cells <= MAX_DECODE_CELLS, (
        f"{label} * (longest prompt + new tokens) must be at most "
        f"{MAX_DECODE_CELLS} ({CELLS_RULE}); split the request or shorten "
        "its prompts"
    )


def graph_checks(
    values: dict, stop, stop_ids, batch, context: int, prompts: str = "prompt"
) -> list:
    """In-graph asserts on a signature's batched inputs (settings of `SPEC`
    and `BEAM_SPEC`, stops, the size caps of `limit_checks`); every message
    names its input. `prompts` names the input that holds the prompts."""
    rules = [s for s in (*SPEC, *BEAM_SPEC) if s.name in values]
    checks = [
        _assert(
            tf.equal(tf.shape(values[s.name])[0], batch),
            f"{s.name} needs one value per prompt (the same dimension 0 "
            "as prompt)",
        )
        for s in rules
    ]
    with tf.control_dependencies(checks):
        checks += [
            _assert(
                tf.reduce_all(s.valid(values[s.name])),
                f"{s.name} must be {s.rule}",
            )
            for s in rules
        ]
        checks += [
            _assert(ok, msg)
            for ok, _, msg in limit_checks(values, batch, context, prompts)
        ]
        if "max_length" in values:
            checks += [_assert(ok, msg) for ok, _, msg in cross_checks(values)]
        else:  # `UNSET` means "use max_length", which is not an input here
            checks.append(
                _assert(
                    tf.reduce_all(values["max_new_tokens"] >= 0),
                    "max_new_tokens must be >= 0",
                )
            )
        if "num_beams" in values:
            checks += _beam_checks(values)
    if stop is not None:
        checks += _stop_checks(stop, stop_ids, batch)
    return checks


def _beam_checks(values: dict) -> list:
    n, k = values["num_beams"], values["num_return_sequences"]
    return [
        _assert(
            tf.reduce_all(tf.equal(n, n[:1])),
            "num_beams must be the same for every prompt",
        ),
        _assert(
            tf.reduce_all((k >= 1) & (k <= n)),
            "num_return_sequences must be in [1, num_beams]",
        ),
    ]


def _stop_checks(stop, stop_ids, batch):
    lengths = tf.strings.length(stop)
    return [
        _assert(
            tf.equal(tf.shape(stop)[0], batch),
            "stop needs one row per prompt (the same dimension 0 as prompt)",
        ),
        _assert(
            tf.shape(stop)[1] <= MAX_STOP_STRINGS,
            f"stop takes at most {MAX_STOP_STRINGS} strings a row",
        ),
        _assert(
            tf.reduce_all(lengths <= MAX_STOP_BYTES),
            f"stop strings must be at most {MAX_STOP_BYTES} bytes",
        ),
        _assert(
            tf.equal(tf.shape(stop_ids)[0], batch),
            "stop_ids needs one row per prompt (the same dimension 0 as "
            "prompt)",
        ),
        _assert(
            tf.shape(stop_ids)[1] <= MAX_STOP_IDS,
            f"stop_ids takes at most {MAX_STOP_IDS} ids a row (-1 pads)",
        ),
    ]


def _assert(condition, message):
    return tf.debugging.Assert(condition, [message])


def fill_defaults(values: dict, batch) -> dict:
    """Every setting of `SPEC`, the missing ones at their default `[B]`."""
    out = {}
    for s in SPEC:
        if s.name in values:
            out[s.name] = tf.cast(values[s.name], s.dtype)
        else:
            out[s.name] = tf.fill([batch], tf.constant(s.default, s.dtype))
    return out


def max_new_tokens(values: dict, prompt_lengths, context: int):
    """int32 `[B]`: the new tokens each row may make (see the module doc).

    Args:
        values: the settings, `max_new_tokens` and `max_length` `[B]`.
        prompt_lengths: int32 `[B]`, each prompt's tokens before any cut
            (an empty prompt counts its start token).
        context: the model's context length.
    """
    default = min(DEFAULT_MAX_NEW_TOKENS, context - 1)
    asked = values["max_new_tokens"]
    from_length = tf.maximum(values["max_length"] - prompt_lengths, 0)
    new = tf.where(
        asked != UNSET,
        asked,
        tf.where(values["max_length"] != UNSET, from_length, default),
    )
    return tf.clip_by_value(new, 0, context - 1)


def fit_context(asked, prompt_lengths, context: int):
    """int32 `[B]`: `asked` new tokens capped at the room each prompt leaves.

    Args:
        asked: int32 `[B]`, `max_new_tokens` as resolved.
        prompt_lengths: int32 `[B]`, each prompt's tokens before any cut.
        context: the model's context length.

    Example:
    >>> asked, lengths = tf.constant([500, 5, 0]), tf.constant([3, 200, 3])
    >>> fit_context(asked, lengths, 128).numpy().tolist()
    [125, 1, 0]
    """
    kept = tf.clip_by_value(prompt_lengths, 1, context - 1)
    return tf.minimum(asked, context - kept)


def check(values: dict, context: int, num_beams: int = 1) -> None:
    """Raises `InputError` where `graph_checks` would fail a request.

    Args:
        values: setting name -> `[B]` tensor (eager), as `fill_defaults`
            gives.
        context: the model's context length.
        num_beams: beam search's beams (checked by `check_beams`), 1 for
            the sampling loop.
    """
    for s in SPEC:
        ok = s.valid(values[s.name])
        if not bool(tf.reduce_all(ok)):
            raise errors.InputError(
                f"{s.name} must be {s.rule}. Received: "
                f"{s.name}={values[s.name].numpy().tolist()}."
            )
    for ok, names, message in cross_checks(values):
        if not bool(ok):
            received = ", ".join(
                f"{n}={values[n].numpy().tolist()}" for n in names.split(", ")
            )
            raise errors.InputError(f"{message}. Received: {received}.")
    names = ("num_return_sequences", "no_repeat_ngram_size")
    sizes = {k: values[k] for k in names}
    batch = int(sizes["num_return_sequences"].shape[0])
    largest = {k: int(np.max(v.numpy(), initial=0)) for k, v in sizes.items()}
    if num_beams > 1:  # saturated as in the graph, so that it fits int32
        most = min(num_beams, MAX_DECODE_ROWS + 1)
        sizes["num_beams"] = tf.fill([batch], most)
        largest["num_beams"] = num_beams
    for ok, inputs, message in limit_checks(sizes, batch, context):
        if not bool(ok):
            received = ", ".join(
                f"prompts={batch}" if n == "prompt" else f"{n}={largest[n]}"
                for n in inputs
            )
            raise errors.InputError(f"{message}. Received: {received}.")


def check_beams(values: dict, given: dict) -> bool:
    """Checks the beam settings of a Python call; whether it is beam search.

    Args:
        values: `num_beams`, `length_penalty`, `early_stopping` (Python
            values, defaults filled in).
        given: the call's other settings, as given (`None`: not given).

    Raises:
        InputError: a bad beam setting, or a setting beam search would not
            apply.
    """
    n, lp = values["num_beams"], values["length_penalty"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise errors.InputError(
            f"num_beams must be an int >= 1. Received: num_beams={n!r}."
        )
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
        return False
    nrs = given.get("num_return_sequences")
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
    for name, off in NOT_WITH_BEAMS.items():
        value = given.get(name)
        if value is not None and np.any(np.asarray(value) != off):
            raise errors.InputError(
                f"{name} is not supported with beam search (num_beams > 1); "
                f"leave it at {off}. Received: {name}={value!r}."
            )
    if given.get("stop"):
        raise errors.InputError(
            "stop is not supported with beam search (num_beams > 1); beams "
            "end at end-of-text or the length. Received: "
            f"stop={given['stop']!r}."
        )
    return True


# Each signature's outputs (the serving contract), in order.
OUTPUTS = {
    "serving_default": ("text", "token_ids", "num_tokens", "stop_reason"),
    "generate": (
        "text",
        "token_ids",
        "num_tokens",
        "stop_reason",
        "prompt_index",
    ),
    "beam_search": (
        "text",
        "token_ids",
        "num_tokens",
        "score",
        "prompt_index",
        "stop_reason",
    ),
    "chat": ("text", "num_tokens", "stop_reason"),
}
