"""Range checks of `TrainConfig` fields, run before anything is built.

Each check raises `tflm.errors.InputError` naming the flag and the value,
e.g. `--learning-rate must be a finite number > 0. Received:
learning_rate=nan.` NaN fails every check: each test is written so that a
comparison with NaN (always false) means "invalid".

This module imports no TensorFlow at import time; `check_config` imports
`tflm.models` (and so TensorFlow) to look the preset up.
"""

from __future__ import annotations

import math
from typing import Any

from tflm import errors

# Integer fields: (smallest, largest or None). `seed` seeds NumPy too.
_INTEGERS: dict[str, tuple[int, int | None]] = {
    "steps": (1, None),
    "batch_size": (1, None),
    "sequence_length": (1, None),
    "accumulation_steps": (1, None),
    "warmup_steps": (0, None),
    "checkpoint_every": (0, None),
    "validate_every": (0, None),
    "eval_batches": (0, None),
    "seed": (0, 2**32 - 1),
    "log_every": (1, None),
    "lora_rank": (1, None),
    "early_stopping_patience": (1, None),
}
# Real fields: (low, low included, high (excluded) or None).
_NUMBERS: dict[str, tuple[float, bool, float | None]] = {
    "epochs": (0.0, False, None),
    "learning_rate": (0.0, False, None),
    "min_learning_rate": (0.0, True, None),
    "weight_decay": (0.0, True, None),
    "beta_1": (0.0, True, 1.0),
    "beta_2": (0.0, True, 1.0),
    "clip_norm": (0.0, True, None),
    "dropout": (0.0, True, 1.0),
    "validation_fraction": (0.0, True, 1.0),
    "lora_alpha": (0.0, False, None),
}


def flag(name: str) -> str:
    """The CLI flag of a field: `learning_rate` -> `--learning-rate`."""
    return "--" + name.replace("_", "-")


def fail(name: str, value: Any, requirement: str) -> errors.InputError:
    """The error for field `name` holding `value`, which must be ..."""
    return errors.InputError(
        f"{flag(name)} must be {requirement}. Received: {name}={value!r}."
    )


def check_integer(name: str, value: Any, low: int, high: int | None = None):
    """Raises unless `value` is an int in `[low, high]`."""
    requirement = f"an integer >= {low}"
    if high is not None:
        requirement = f"an integer in [{low}, {high}]"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or value < low or (high is not None and value > high):
        raise fail(name, value, requirement)


def check_number(
    name: str,
    value: Any,
    low: float,
    low_included: bool,
    high: float | None = None,
):
    """Raises unless `value` is a finite real in the interval given."""
    if high is None:
        requirement = f"a finite number {'>=' if low_included else '>'} {low:g}"
    else:
        opening = "[" if low_included else "("
        requirement = f"a number in {opening}{low:g}, {high:g})"
    is_real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_real and math.isfinite(value)):
        raise fail(name, value, requirement)
    above_low = value >= low if low_included else value > low
    if not above_low or (high is not None and not value < high):
        raise fail(name, value, requirement)


def check_config(config, optional: frozenset[str]) -> None:
    """Checks every field of a `TrainConfig` and how they fit together.

    Args:
        config: the `TrainConfig`.
        optional: the fields that may be `None` (meaning "the default").

    Raises:
        InputError: the first bad field, named by its flag.
    """
    for name, (low, high) in _INTEGERS.items():
        value = getattr(config, name)
        if value is not None or name not in optional:
            check_integer(name, value, low, high)
    for name, bounds in _NUMBERS.items():
        value = getattr(config, name)
        if value is not None or name not in optional:
            check_number(name, value, *bounds)
    if not isinstance(config.jsonl_field, str) or not config.jsonl_field:
        raise fail("jsonl_field", config.jsonl_field, "a field name")
    _check_together(config)
    _check_start(config)


def _check_together(config) -> None:
    if config.steps is not None and config.epochs is not None:
        raise errors.InputError(
            "Give --steps or --epochs, not both. Received: "
            f"steps={config.steps}, epochs={config.epochs}."
        )
    floor, rate = config.min_learning_rate, config.learning_rate
    # No rate: checked once `resolve_learning_rate` has chosen it.
    if floor is not None and rate is not None and not floor <= rate:
        raise fail(
            "min_learning_rate",
            floor,
            f"<= --learning-rate ({config.learning_rate!r})",
        )
    warmup = config.warmup_steps
    if (
        config.steps is not None
        and warmup is not None
        and warmup > config.steps
    ):
        raise fail(
            "warmup_steps",
            config.warmup_steps,
            f"<= --steps ({config.steps})",
        )
    if config.batch_size % config.accumulation_steps:
        raise fail(
            "batch_size",
            config.batch_size,
            f"a multiple of --accumulation-steps ({config.accumulation_steps})",
        )


def _check_start(config) -> None:
    if (config.preset is None) == (config.init_from is None):
        raise errors.InputError(
            "Name the architecture with --preset (a new model) or the model "
            "to start from with --init-from, not both. Received: "
            f"preset={config.preset!r}, init_from={config.init_from!r}."
        )
    if config.preset is not None:
        check_preset(config.preset, config.sequence_length)
    from tflm.train import config as config_lib

    for target in config.lora_targets:
        if target not in config_lib.LORA_TARGETS:
            raise fail(
                "lora_targets",
                target,
                f"among {', '.join(config_lib.LORA_TARGETS)}",
            )
    if config.lora_rank is None and config.lora_alpha is not None:
        raise errors.InputError("--lora-alpha needs --lora-rank.")


def check_preset(name: Any, sequence_length: int | None = None) -> dict:
    """Checks that preset `name` exists and holds `sequence_length` tokens.

    Returns:
        The preset's `Backbone` arguments.

    Raises:
        InputError: an unknown preset (the message lists the known ones),
            or a `sequence_length` beyond its context.
    """
    from tflm.models import presets  # Imports TensorFlow.

    backbone = presets.get_preset(name)
    context = backbone["max_sequence_length"]
    if sequence_length is not None and sequence_length > context:
        raise fail(
            "sequence_length",
            sequence_length,
            f"<= the context of preset {name!r} ({context} tokens)",
        )
    return backbone


def resolve_warmup(warmup_steps: int | None, total_steps: int) -> int:
    """The warm-up of a run of `total_steps`: as given, or by default 100
    steps, at most a tenth of the run. A given warm-up longer than the run
    (from `--epochs`) is an error."""
    if warmup_steps is None:
        return min(100, total_steps // 10)
    if warmup_steps > total_steps:
        raise fail(
            "warmup_steps",
            warmup_steps,
            f"<= the run's {total_steps} steps (from --epochs and --data); "
            "pass a smaller --warmup-steps or more --epochs",
        )
    return warmup_steps
