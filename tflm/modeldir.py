"""Save, load and validate a model directory.

A model directory is the unit a user moves around: `config.json`
(`format_version`, `tflm_version`, `backbone`, `tokenizer`),
`model.weights.h5` (Keras `save_weights`), `tokenizer/` (`Tokenizer.save`),
optionally `train/` (the state `tflm train` resumes from), and anything else
(TensorBoard `logs/`, a user's notes).

`save` writes a hidden `.NAME.tmp-*` beside the target and renames it into
place: a crash never leaves a half-written directory. An old one is renamed
aside first; what `save` does not write itself (`logs/`, a user's files) is
moved into the new one before the old one is deleted.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import h5py

import tflm
from tflm import tokenizers
from tflm.models import backbone as backbone_lib
from tflm.models import causal_lm
from tflm.models import weights as weights_lib

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
TOKENIZER_DIR = "tokenizer"
TRAIN_DIR = "train"
# What `save` owns (the training state belongs to the weights beside it).
MANAGED = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR, TRAIN_DIR)

Extra = Mapping[str, "str | bytes | Callable[[str], None]"]


def save(
    model: causal_lm.CausalLM,
    tokenizer: tokenizers.Tokenizer,
    directory: str | os.PathLike,
    *,
    extra: Extra | None = None,
) -> None:
    """Writes `model` and `tokenizer` to `directory`, atomically.

    Args:
        model: a `CausalLM`. Its backbone config is saved with the dtype of
            its variables (`"float32"` for mixed policies): the compute
            precision is chosen when loading.
        tokenizer: the model's tokenizer.
        directory: the model directory; created, or replaced when it already
            is a model directory (or an empty folder).
        extra: more files, by path relative to `directory` (for example
            `"train/state.json"`): a `str` or `bytes` content, or a function
            called with the file's absolute path that writes it.

    Raises:
        ValueError: `directory` is a file, or a non-empty non-model folder.
    """
    directory = os.path.abspath(os.fspath(directory))
    recover(directory)
    check_target(directory)
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        _write(model, tokenizer, temp, extra or {})
        os.chmod(temp, 0o755)
        _swap(temp, directory)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def check_target(directory: str | os.PathLike) -> None:
    """Raises `ValueError` unless `save` may write `directory`."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{directory} is a file, not a model directory.")
    if os.path.isdir(directory) and not is_model_dir(directory):
        if os.listdir(directory):
            raise ValueError(
                f"{directory} holds files but no tflm model ({CONFIG_FILE} "
                "is missing or unreadable); refusing to write into it. Name "
                "a new or empty folder."
            )


def _write(model, tokenizer, temp: str, extra: Extra) -> None:
    tokenizer_dir = os.path.join(temp, TOKENIZER_DIR)
    tokenizer.save(tokenizer_dir)
    with open(os.path.join(tokenizer_dir, tokenizers.base.CONFIG_FILE)) as f:
        tokenizer_config = json.load(f)
    model.save_weights(os.path.join(temp, WEIGHTS_FILE))
    config = {
        "format_version": FORMAT_VERSION,
        "tflm_version": tflm.__version__,
        "backbone": backbone_config(model),
        "tokenizer": tokenizer_config,
        **weights_lib.config_entry(model),
    }
    files = {CONFIG_FILE: json.dumps(config, indent=2) + "\n", **extra}
    for relative, content in files.items():
        path = os.path.normpath(os.path.join(temp, relative))
        if os.path.isabs(relative) or not path.startswith(temp + os.sep):
            raise ValueError(
                "extra paths must stay inside the model directory. "
                f"Received: {relative!r}"
            )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if callable(content):
            content(path)
        else:
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(path, mode) as f:
                f.write(content)


def backbone_config(model: causal_lm.CausalLM) -> dict[str, Any]:
    """The backbone's config with the dtype of its variables."""
    config = model.backbone.get_config()
    policy = model.backbone.token_embedding.dtype_policy
    config["dtype"] = policy.variable_dtype
    return config


def _swap(temp: str, directory: str) -> None:
    if not os.path.exists(directory):
        os.rename(temp, directory)
        return
    parent, name = os.path.split(temp)
    old = os.path.join(parent, name.replace(".tmp-", ".old-", 1))
    os.rename(directory, old)
    os.rename(temp, directory)
    _carry_over(old, directory)
    shutil.rmtree(old)


def _carry_over(old: str, new: str) -> None:
    """Moves the entries of `old` that `save` does not own into `new`."""
    for entry in os.listdir(old):
        if entry not in MANAGED:
            _merge(os.path.join(old, entry), os.path.join(new, entry))


def _merge(source: str, target: str) -> None:
    """Moves `source` to `target`, merging folders; never overwrites."""
    if not os.path.lexists(target):
        os.rename(source, target)
    elif os.path.isdir(source) and os.path.isdir(target):
        for entry in os.listdir(source):
            _merge(os.path.join(source, entry), os.path.join(target, entry))


def recover(directory: str | os.PathLike) -> None:
    """Finishes or undoes a `save` that a crash interrupted: restores a
    directory renamed aside, moves entries out of an old one, and removes
    unfinished temporary ones."""
    directory = os.path.abspath(os.fspath(directory))
    parent, name = os.path.split(directory)
    prefix = os.path.join(glob.escape(parent), f".{glob.escape(name)}")
    olds = sorted(glob.glob(prefix + ".old-*"), key=os.path.getmtime)
    if olds and not os.path.exists(directory):
        logger.warning("Restoring %s from %s.", directory, olds[-1])
        os.rename(olds.pop(), directory)
    for old in olds:
        _carry_over(old, directory)
        shutil.rmtree(old)
    for temp in glob.glob(prefix + ".tmp-*"):
        shutil.rmtree(temp, ignore_errors=True)


def is_model_dir(directory: str | os.PathLike) -> bool:
    """Whether `directory` has a readable tflm `config.json`."""
    try:
        _read_config(os.fspath(directory))
    except ValueError:
        return False
    return True


def _read_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{path} is missing: {directory} is not a tflm model directory."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    keys = ("format_version", "backbone", "tokenizer")
    missing = [
        k for k in keys if not isinstance(config, dict) or k not in config
    ]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}.")
    version = config["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version={version!r}; this tflm reads up to "
            f"{FORMAT_VERSION}. Upgrade tflm."
        )
    return config


def validate(directory: str | os.PathLike) -> dict[str, Any]:
    """Checks that `directory` is a complete, readable model directory.

    Returns:
        The parsed `config.json`.

    Raises:
        ValueError: naming the file that is missing or corrupt.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory} is not a directory.")
    config = _read_config(directory)
    _check_weights(os.path.join(directory, WEIGHTS_FILE))
    tokenizer_config = os.path.join(
        directory, TOKENIZER_DIR, tokenizers.base.CONFIG_FILE
    )
    if not os.path.isfile(tokenizer_config):
        raise ValueError(f"{tokenizer_config} is missing.")
    return config


def _check_weights(path: str) -> None:
    """Raises when the weights file is missing, not HDF5, or truncated."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} is missing.")
    spans = []  # (name, offset, bytes) of each stored weight

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and item.id.get_offset() is not None:
            spans.append(
                (name, item.id.get_offset(), item.id.get_storage_size())
            )

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except (OSError, RuntimeError, ValueError) as err:
        message = f"{path} is not a readable weights file: {err}"
        raise ValueError(message) from None
    size = os.path.getsize(path)
    cut = [name for name, offset, length in spans if offset + length > size]
    if cut:
        raise ValueError(
            f"{path} is truncated: {len(cut)} weight(s) end past the end of "
            f"the file (first: {cut[0]})."
        )


def load(
    directory: str | os.PathLike, *, dtype: str | None = None
) -> causal_lm.CausalLM:
    """Builds the model saved in `directory`, with its weights and tokenizer.

    Args:
        directory: a model directory written by `save`.
        dtype: dtype policy for the model, such as `"mixed_bfloat16"`;
            defaults to the saved variable dtype (`"float32"`).

    Returns:
        A `CausalLM` whose `tokenizer` attribute is the loaded tokenizer.

    Raises:
        ValueError: a missing or corrupt file, or weights that do not fit.
    """
    config = validate(directory)
    backbone_kwargs = dict(config["backbone"])
    if dtype is not None:
        backbone_kwargs["dtype"] = dtype
    try:
        backbone = backbone_lib.Backbone.from_config(backbone_kwargs)
    except (TypeError, ValueError) as err:
        path = os.path.join(directory, CONFIG_FILE)
        raise ValueError(f"{path}: invalid backbone config: {err}") from None
    model = causal_lm.CausalLM(backbone)
    weights_lib.restore_weights(model, config)
    path = os.path.join(directory, WEIGHTS_FILE)
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} does not fit {CONFIG_FILE}: {err}") from None
    model.tokenizer = tokenizers.load_tokenizer(
        os.path.join(directory, TOKENIZER_DIR)
    )
    return model
