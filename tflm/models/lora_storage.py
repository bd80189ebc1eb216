"""The LoRA part of a model directory: `adapters.npz` and `config.json`.

`tflm.models.model_dir` calls these hooks: `config_entry` for
`config.json`, `save_adapters` when writing, `base_parent` and
`restore_adapters` when loading. The adapters are a plain `.npz` (keys as
in `tflm.models.lora.adapter_weights`), read without pickles.

A fine-tune whose base is its parent model directory, unchanged, keeps the
base by reference: `config.json` records `"lora": {..., "base": "parent"}`
beside `"parent": {"path", "sha256", ...}`, and the directory holds no
`model.weights.h5`; loading reads the base from the parent.
"""

from __future__ import annotations

import os

import numpy as np

from tflm import errors
from tflm.models import lora

ADAPTERS_FILE = "adapters.npz"
CONFIG_KEY = "lora"
# `config.json["lora"]["base"]` of a directory whose base is its parent.
BASE_PARENT = "parent"
_KEYS = {"rank", "alpha", "targets"}


def config_entry(model, base_from_parent: bool = False) -> dict:
    """What `config.json` records: `{"lora": {...}}`, nothing without LoRA;
    with `base_from_parent`, `"base": "parent"` in it."""
    config = lora.lora_config(model)
    if config is None:
        return {}
    if base_from_parent:
        config["base"] = BASE_PARENT
    return {CONFIG_KEY: config}


def base_parent(config: dict, path: str) -> dict | None:
    """The `parent` record (`path`, `sha256`) of a directory whose base
    weights are its parent's; `None` when it holds its own.

    Args:
        config: the directory's `config.json`.
        path: that file's path, for messages.

    Raises:
        InputError: `"base"` is not `"parent"`, or no parent is recorded.
    """
    entry = config.get(CONFIG_KEY)
    if not isinstance(entry, dict) or "base" not in entry:
        return None
    parent = config.get("parent")
    fields = ("path", "sha256")
    if entry["base"] != BASE_PARENT or not (
        isinstance(parent, dict)
        and all(isinstance(parent.get(k), str) for k in fields)
    ):
        raise errors.InputError(
            f'{path}: {CONFIG_KEY}.base must be "parent", with the parent\'s '
            f"path and sha256 recorded. Received: base={entry['base']!r}, "
            f"parent={parent!r}."
        )
    return parent


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
    if not isinstance(entry, dict) or set(entry) - {"base"} != _KEYS:
        raise errors.InputError(
            f"config.json: {CONFIG_KEY} must be an object with "
            f"{', '.join(sorted(_KEYS))} (and base). Received: "
            f"{CONFIG_KEY}={entry!r}."
        )
    try:
        lora.enable_lora(model, **{k: entry[k] for k in _KEYS})
    except errors.InputError as err:
        raise errors.InputError(f"config.json: {CONFIG_KEY}: {err}") from None
    load_adapters(model, directory)
