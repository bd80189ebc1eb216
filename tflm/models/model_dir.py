"""The model directory: the model's own preset format.

A model directory is the unit a user moves around: `config.json`
(`format_version`, `tflm_version`, `backbone`, `tokenizer`),
`model.weights.h5` (Keras `save_weights`), `tokenizer/` (`Tokenizer.save`),
optionally `train/` (the state `tflm train` resumes from), and anything else
(TensorBoard `logs/`, a user's notes), which writing never removes. A LoRA
fine-tune of a model directory holds `adapters.npz` instead of the weights
and reads its base from that parent (see `tflm.models.lora_storage`).

`save` goes through `tflm.atomic.write_directory`: a crash never leaves a
half-written directory, and an existing model is replaced only with
`overwrite=True`. `CausalLM.from_preset(directory)` loads one (through
`load_model`), and `CausalLM.save_to_preset` writes one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import tflm
from tflm import atomic
from tflm import digests
from tflm import errors
from tflm import tokenizers
from tflm.models import backbone as backbone_lib
from tflm.models import lora as lora_lib
from tflm.models import lora_storage
from tflm.models import model_dir_checks as checks
from tflm.models import weights as weights_lib
from tflm.tokenizers import templates

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
TOKENIZER_DIR = "tokenizer"
TRAIN_DIR = "train"
# What `save` owns (the training state belongs to the weights beside it).
MANAGED = (
    CONFIG_FILE,
    WEIGHTS_FILE,
    TOKENIZER_DIR,
    TRAIN_DIR,
    lora_storage.ADAPTERS_FILE,
)

Extra = Mapping[str, "str | bytes | Callable[[str], None]"]


def save(
    model,
    tokenizer: tokenizers.Tokenizer,
    directory: str | os.PathLike,
    *,
    extra: Extra | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    merge_lora: bool = False,
    base_from_parent: bool = False,
) -> str:
    """Writes `model` and `tokenizer` to `directory`, atomically.

    A model with LoRA adapters (`tflm.models.lora`) keeps its base weights
    in `model.weights.h5` and its adapters apart in `adapters.npz`; with
    `base_from_parent`, only the adapters.

    Args:
        model: a `CausalLM`. Its backbone config is saved with the dtype of
            its variables (`"float32"` for mixed policies): the compute
            precision is chosen when loading.
        tokenizer: the model's tokenizer.
        directory: the model directory: new, an empty folder, or (with
            `overwrite=True`) a model directory to replace. A symbolic link
            is followed. Other entries of the folder (`logs/`, notes) stay.
        extra: more files, by path relative to `directory` (for example
            `"train/state.json"`): a `str` or `bytes` content, or a function
            called with the file's absolute path that writes it.
        metadata: more JSON-safe `config.json` entries, such as `parent`
            (the model it was fine-tuned from), `template` (see
            `tflm.tokenizers.templates`) or `best_step`.
        overwrite: replace an existing model (and drop its `train/` state).
        merge_lora: write the adapters merged into the base weights (one
            plain model, as `tflm.models.lora.merged`); `model` is kept.
        base_from_parent: the base weights of `model` (with adapters) are
            exactly those of the model directory `metadata["parent"]`
            records (`path`, and `sha256` from `fingerprint`): they are not
            written, and loading reads them from the parent.

    Returns:
        The real path of the directory.

    Raises:
        InputError: `directory` is a file, a non-empty non-model folder, an
            existing model without `overwrite`, or the disk is full.
    """
    directory = check_target(directory)
    extra = dict(extra or {})
    model = lora_lib.merged(model) if merge_lora else model
    if base_from_parent:
        _check_base_from_parent(model, metadata)
    config = model_config(model, tokenizer, metadata, base_from_parent)

    def write(temp: str) -> None:
        tokenizer.write_files(os.path.join(temp, TOKENIZER_DIR))
        if not base_from_parent:
            model.save_weights(os.path.join(temp, WEIGHTS_FILE))
        lora_storage.save_adapters(model, temp)
        _write_json(os.path.join(temp, CONFIG_FILE), config)
        _write_extra(temp, extra)

    return atomic.write_directory(
        directory, write, overwrite=overwrite, owned=MANAGED
    )


def _check_base_from_parent(model, metadata) -> None:
    parent = (metadata or {}).get("parent")
    if lora_lib.lora_config(model) is None or not isinstance(parent, dict):
        raise ValueError(
            "base_from_parent needs a model with LoRA adapters and "
            "metadata['parent'] (path, sha256) naming its base."
        )
    probe = {**(metadata or {}), **lora_storage.config_entry(model, True)}
    lora_storage.base_parent(probe, CONFIG_FILE)


def check_target(directory: str | os.PathLike) -> str:
    """The real path of `directory` if `save` may write there.

    Raises:
        InputError: it is a file, a dangling link, or a non-empty folder
            that holds no tflm model.
    """
    directory = atomic.resolve(directory)
    if os.path.isdir(directory) and os.listdir(directory):
        if not is_model_dir(directory):
            raise errors.InputError(
                f"{directory} holds files but no tflm model ({CONFIG_FILE} "
                "is missing or unreadable); refusing to write into it. Name "
                "a new or empty folder."
            )
    return directory


def _write_extra(temp: str, extra: Extra) -> None:
    for relative, content in extra.items():
        path = os.path.normpath(os.path.join(temp, relative))
        if os.path.isabs(relative) or not path.startswith(temp + os.sep):
            raise errors.InputError(
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


def model_config(
    model,
    tokenizer: tokenizers.Tokenizer,
    metadata: Mapping[str, Any] | None = None,
    base_from_parent: bool = False,
) -> dict[str, Any]:
    """What `config.json` holds for `model` and `tokenizer` (and the
    entries of `metadata`; see `save` for `base_from_parent`)."""
    return {
        **(metadata or {}),
        "format_version": FORMAT_VERSION,
        "tflm_version": tflm.__version__,
        "backbone": backbone_config(model),
        "tokenizer": tokenizers.base.tokenizer_config(tokenizer),
        **weights_lib.config_entry(model),
        **lora_storage.config_entry(model, base_from_parent),
        **_eos_entry(model),
    }


def _eos_entry(model) -> dict[str, Any]:
    eos_ids = list(getattr(model, "eos_ids", ()))
    return {"eos_ids": eos_ids} if eos_ids else {}


def write_config(
    path: str,
    model,
    tokenizer: tokenizers.Tokenizer,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Writes the config of `model` and `tokenizer` as JSON to `path`.

    The one writer of `config.json`, for model directories and for the
    `assets/tflm_config.json` of exports.
    """
    _write_json(path, model_config(model, tokenizer, metadata))


def _write_json(path: str, config: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def backbone_config(model) -> dict[str, Any]:
    """The backbone's config with the dtype of its variables."""
    config = model.backbone.get_config()
    policy = model.backbone.token_embedding.dtype_policy
    config["dtype"] = policy.variable_dtype
    return config


def recover(directory: str | os.PathLike) -> None:
    """Finishes or undoes a `save` that a kill interrupted (see
    `tflm.atomic.sweep`)."""
    directory = os.path.realpath(os.fspath(directory))
    atomic.sweep(*os.path.split(directory), MANAGED)


# The `config.json` entry naming the Hugging Face `model_type` an imported
# model came from (carried to its fine-tunes); the default of
# `tflm export --format huggingface`.
HF_MODEL_TYPE = "hf_model_type"

# What `fingerprint` reads of a model directory: the `config.json` fields
# that describe the model (not `tflm_version`, `best_step` or the record of
# where it came from), and the files of the weights and the tokenizer.
FINGERPRINT_FIELDS = (
    "format_version",
    "backbone",
    "tokenizer",
    weights_lib.CONFIG_KEY,
    lora_storage.CONFIG_KEY,
    "template",
    "eos_ids",
)


def fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 that identifies the model at `path` (see `fingerprint_record`).

    Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "a.bin"), "wb").write(b"a")
    >>> len(fingerprint(folder))
    64
    """
    return fingerprint_record(path)["sha256"]


def fingerprint_record(
    path: str | os.PathLike, known: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The fingerprint of the model at `path`, and what it was made from.

    For a model directory, the SHA-256 covers the model only: the
    `FINGERPRINT_FIELDS` of `config.json`, the record of its own parent when
    its base weights are that parent's, and the names and SHA-256 of
    `model.weights.h5`, `adapters.npz` and every file under `tokenizer/`.
    Anything else in the folder (`train/`, `logs/`, notes, an export written
    into it) leaves it unchanged. For another folder (a checkpoint to
    import), it covers the names and contents of all its files but `train/`
    and `logs/`.

    Args:
        path: a model directory, or a checkpoint directory.
        known: an earlier record of the same directory: a file whose size
            and modification time are those it records is not read again,
            its recorded SHA-256 is used (as `make` trusts times).

    Returns:
        `{"sha256": ..., "files": {name: [size, mtime_ns, sha256]}}`;
        `files` is empty for a folder that is not a model directory.
    """
    path = os.fspath(path)
    if not is_model_dir(path):
        return {
            "sha256": digests.tree_sha256(path, skip_dirs=(TRAIN_DIR, "logs")),
            "files": {},
        }
    config = read_config(path)
    fields = {k: config[k] for k in FINGERPRINT_FIELDS if k in config}
    parent = lora_storage.base_parent(config, os.path.join(path, CONFIG_FILE))
    if parent is not None:
        fields["parent"] = parent["sha256"]
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    cached = (known or {}).get("files")
    cached = cached if isinstance(cached, dict) else {}
    files = {}
    for name in _model_files(path):
        stat = os.stat(os.path.join(path, name))
        entry = cached.get(name)
        if (
            isinstance(entry, list)
            and len(entry) == 3
            and entry[:2] == [stat.st_size, stat.st_mtime_ns]
            and isinstance(entry[2], str)
        ):
            sha256 = entry[-1]
        else:
            sha256 = digests.file_sha256(os.path.join(path, name))
        files[name] = [stat.st_size, stat.st_mtime_ns, sha256]
        digest.update(f"\0{name}\0{sha256}".encode())
    return {"sha256": digest.hexdigest(), "files": files}


def _model_files(directory: str) -> list[str]:
    """The files of a model directory's weights and tokenizer, by name."""
    names = [
        name
        for name in (WEIGHTS_FILE, lora_storage.ADAPTERS_FILE)
        if os.path.isfile(os.path.join(directory, name))
    ]
    tokenizer = os.path.join(directory, TOKENIZER_DIR)
    for root, dirs, files in os.walk(tokenizer):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            names.append(os.path.relpath(full, directory))
    return names


def is_model_dir(directory: str | os.PathLike) -> bool:
    """Whether `directory` has a readable tflm `config.json`."""
    try:
        read_config(os.fspath(directory))
    except ValueError:
        return False
    return True


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of a model directory.

    Raises:
        InputError: it is missing, not JSON, or from a newer tflm.
    """
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    if not os.path.isfile(path):
        raise errors.InputError(
            f"{path} is missing: {directory} is not a tflm model directory."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errors.InputError(f"{path} is not valid JSON: {err}") from None
    keys = ("format_version", "backbone", "tokenizer")
    missing = [
        k for k in keys if not isinstance(config, dict) or k not in config
    ]
    if missing:
        raise errors.InputError(f"{path} lacks {', '.join(missing)}.")
    version = config["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise errors.InputError(
            f"{path} has format_version={version!r}; this tflm reads up to "
            f"{FORMAT_VERSION}. Upgrade tflm."
        )
    return config


def validate(directory: str | os.PathLike) -> dict[str, Any]:
    """Checks that `directory` is a complete, readable model directory.

    Reads only file headers: the weights' shapes (the parent's, for a LoRA
    directory that keeps its base by reference) are compared with the
    config's sizes, and nothing is built.

    Returns:
        The parsed `config.json`.

    Raises:
        InputError: naming the file that is missing, corrupt, or does not
            fit the others.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise errors.InputError(f"{directory} is not a directory.")
    config = read_config(directory)
    weights = os.path.join(_base_directory(directory, config), WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise errors.InputError(f"{weights} is missing.")
    shapes = checks.read_header(weights)
    backbone = config["backbone"]
    if isinstance(backbone, dict):
        checks.check_shapes(weights, shapes, backbone)
    tokenizer = os.path.join(directory, TOKENIZER_DIR)
    if not tokenizers.is_tokenizer_directory(tokenizer):
        path = os.path.join(tokenizer, tokenizers.base.CONFIG_FILE)
        raise errors.InputError(f"{path} is missing.")
    return config


def _base_directory(directory: str, config: dict[str, Any]) -> str:
    """Where the base weights of `directory` are: itself, or its parent.

    Raises:
        InputError: the parent holding them is not a model directory.
    """
    path = os.path.join(directory, CONFIG_FILE)
    parent = lora_storage.base_parent(config, path)
    if parent is None:
        return directory
    if not is_model_dir(parent["path"]):
        raise errors.InputError(
            f"{directory} holds LoRA adapters on the base weights of its "
            f"parent model {parent['path']}, which is missing (moved or "
            "deleted): put it back at that path."
        )
    return parent["path"]


def _check_parent_unchanged(directory: str, parent: dict) -> None:
    """Raises unless the parent is the model `parent` records; only its
    files whose size or time changed since are read again."""
    current = fingerprint_record(parent["path"], known=parent)
    if current["sha256"] != parent["sha256"]:
        raise errors.InputError(
            f"{directory} holds LoRA adapters on the base weights of its "
            f"parent model {parent['path']}, which has changed since (its "
            f"fingerprint differs from the one recorded in {CONFIG_FILE}): "
            "restore that parent, or fine-tune it again (a fine-tune "
            "written by an older tflm recorded another kind of fingerprint)."
        )


def load_model(
    model_class,
    directory: str | os.PathLike,
    *,
    dtype: str | None = None,
    weights: str | None = None,
    **overrides,
):
    """Builds the model saved in `directory`, with weights and tokenizer.

    Args:
        model_class: the class to build, such as `CausalLM`; called with
            the backbone.
        directory: a model directory written by `save`.
        dtype: dtype policy for the model, such as `"mixed_bfloat16"`;
            defaults to the saved variable dtype (`"float32"`).
        weights: one of `tflm.models.weights.WEIGHTS` to convert to, such
            as `"float32"` for training from a directory stored in bfloat16
            or int8 (`config.json["weights"]`): the stored values are cast
            up or dequantized. Defaults to the stored weights.
        **overrides: `Backbone` arguments to change, such as `dropout`.

    Returns:
        The model, with its `tokenizer` and `template` (`None` if the
        config records none) attributes set.

    A LoRA directory that keeps its base by reference (see `save`) is
    built on its parent's weights, after checking that the parent is where
    `config.json` says and unchanged (its `fingerprint`).

    Raises:
        InputError: a missing or corrupt file, weights that do not fit, or
            the parent holding a LoRA directory's base moved or changed.
    """
    directory = os.fspath(directory)
    config = validate(directory)
    model = _load_base(
        model_class, directory, config, dtype, weights, overrides
    )
    lora_storage.restore_adapters(model, config, directory)
    model.tokenizer = tokenizers.load_tokenizer(
        os.path.join(directory, TOKENIZER_DIR)
    )
    model.template = templates.check(config.get("template"))
    if model.template is not None:
        templates.check_tokenizer(model.template, model.tokenizer)
    path = os.path.join(directory, CONFIG_FILE)
    model.eos_ids = _eos_ids(config.get("eos_ids", []), path)
    model.hf_model_type = config.get(HF_MODEL_TYPE)
    return model


def _load_base(model_class, directory, config, dtype, weights, overrides):
    """The model of `directory` with its base weights, before adapters:
    its own, or its parent's where it keeps none (see `load_model`)."""
    path = os.path.join(directory, CONFIG_FILE)
    parent = lora_storage.base_parent(config, path)
    if parent is not None:
        _check_parent_unchanged(directory, parent)
        backbone = dict(config["backbone"])
        saved_dtype = backbone.pop("dtype", None)
        return _load_base(
            model_class,
            parent["path"],
            read_config(parent["path"]),
            dtype or saved_dtype,
            weights or "float32",  # as the fine-tune converted it
            {**backbone, **overrides},
        )
    kwargs = {**config["backbone"], **overrides}
    if dtype is not None:
        kwargs["dtype"] = dtype
    weights_file = os.path.join(directory, WEIGHTS_FILE)
    if overrides:
        checks.check_shapes(
            weights_file, checks.read_header(weights_file), kwargs
        )
    try:
        backbone = backbone_lib.Backbone.from_config(kwargs)
    except (TypeError, ValueError) as err:
        message = f"{path}: invalid backbone config: {err}"
        raise errors.InputError(message) from None
    model = model_class(backbone)
    weights_lib.restore_weights(model, config)
    try:
        model.load_weights(weights_file)
    except (OSError, ValueError, KeyError) as err:
        raise errors.InputError(
            f"{weights_file} does not fit {CONFIG_FILE}: {err}"
        ) from None
    if weights is not None and weights_lib.weights_of(model) != weights:
        model = weights_lib.reconverted(
            model,
            lambda: model_class(backbone_lib.Backbone.from_config(kwargs)),
            weights,
        )
    return model


def _eos_ids(value, path: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        raise errors.InputError(
            f"{path}: eos_ids must be a list of token ids. Received: {value!r}."
        )
    return tuple(value)
