"""The LoRA part of a model directory: `adapters.npz` and `config.json`.

`tflm.models.model_dir` calls these hooks: `config_entry` for
`config.json`, `save_adapters` when writing and `restore_adapters` when
loading. The adapters are a plain `.npz` (keys as in
`tflm.models.lora.adapter_weights`), read without pickles.
"""

from __future__ import annotations

import os

import numpy as np

from tflm import errors
from tflm.models import lora

ADAPTERS_FILE = "adapters.npz"
CONFIG_KEY = "lora"


def config_entry(model) -> dict:
    """What `config.json` records: `{"lora": {...}}`, nothing without LoRA."""
    config = lora.lora_config(model)
    return {} if config is None else {CONFIG_KEY: config}


def save_adapters(model, directory: str) -> None:
    """Writes `directory/adapters.npz` if `model` has adapters (no pickles)."""
    weights = lora.adapter_weights(model)
    if weights:
        with open(os.path.join(directory, ADAPTERS_FILE), "wb") as f:
            np.savez(f, **weights)


def load_adapters(model, directory: str) -> None:
    """Loads `directory/adapters.npz` into `model`'s adapters.

    Raises:
        InputError: the file is missing, unreadable or does not fit.
    """
    path = os.path.join(os.fspath(directory), ADAPTERS_FILE)
    if not os.path.isfile(path):
        raise errors.InputError(
            f"{path} is missing: config.json records LoRA adapters."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise errors.InputError(f"{path} is not readable: {err}") from None
    try:
        lora.load_adapter_weights(model, weights)
    except errors.InputError as err:
        raise errors.InputError(f"{path}: {err}") from None


def restore_adapters(model, config: dict, directory: str) -> None:
    """Re-creates the adapters `config` records on a freshly loaded `model`
    and loads them from `directory`; nothing when it records none."""
    entry = config.get(CONFIG_KEY)
    if entry is None:
        return
    keys = {"rank", "alpha", "targets"}
    if not isinstance(entry, dict) or set(entry) != keys:
        raise errors.InputError(
            f"config.json: {CONFIG_KEY} must be an object with "
            f"{', '.join(sorted(keys))}. Received: {CONFIG_KEY}={entry!r}."
        )
    try:
        lora.enable_lora(model, **entry)
    except errors.InputError as err:
        raise errors.InputError(f"config.json: {CONFIG_KEY}: {err}") from None
    load_adapters(model, directory)
