"""Versioned, atomic SavedModel export for TF Serving and other apps."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import tempfile

import tensorflow as tf

import tflm
from tflm.export import signatures as signatures_lib
from tflm.export import warmup as warmup_lib
from tflm.models import weights as weights_lib

logger = logging.getLogger("tflm")

CONFIG_ASSET = "tflm_config.json"
VERSION_ASSET = "tflm_version.txt"


def existing_versions(base_dir: str) -> list[int]:
    """The numeric version folders under `base_dir`, sorted."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(base_dir)
        if re.fullmatch(r"\d+", name)
        and os.path.isdir(os.path.join(base_dir, name))
    )


def _target(base_dir: str, version: int | None, overwrite: bool) -> str:
    if version is None:
        version = (existing_versions(base_dir) or [0])[-1] + 1
    if version <= 0:
        raise ValueError(f"version must be positive. Received: {version}.")
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"{target} already exists. Pass --overwrite (overwrite=True) to "
            "replace it, or choose another --version."
        )
    return target


def _write_assets(directory: str, model, tokenizer) -> None:
    assets = os.path.join(directory, "assets")
    os.makedirs(assets, exist_ok=True)
    config = {
        "backbone": model.backbone.get_config(),
        "tokenizer": {"type": tokenizer.type_name, **tokenizer.get_config()},
    }
    with open(os.path.join(assets, CONFIG_ASSET), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(assets, VERSION_ASSET), "w") as f:
        f.write(tflm.__version__ + "\n")


def _make_readable(directory: str) -> None:
    # mkdtemp creates 0700; the server may run as another user. Respect the
    # umask, as a plain mkdir would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one step (Linux renameat2); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(
        at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange
    )
    return result == 0


def _move_into_place(tmp: str, target: str) -> None:
    if not os.path.exists(target):
        os.rename(tmp, target)
        return
    # Overwrite: swap the new version in and the old one out in one step
    # where the OS allows it, so the version never goes missing; else move
    # the old one aside under a non-numeric name (TF Serving ignores it)
    # first. Then delete the old one.
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = tempfile.mkdtemp(prefix=".tflm-old-", dir=os.path.dirname(target))
    aside = os.path.join(old, "version")
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)  # put the old version back
        raise
    shutil.rmtree(old, ignore_errors=True)


def export(
    model,
    base_dir: str,
    *,
    tokenizer=None,
    version: int | None = None,
    overwrite: bool = False,
    jit_compile: bool = False,
    warmup: bool = True,
    weights: str | None = None,
) -> str:
    """Exports `model` to `base_dir/<version>/` and returns that path.

    The SavedModel holds the signatures of the serving contract
    (`serving_default`, `score`, `tokenize`, `detokenize`), the tokenizer as
    an asset, `assets/tflm_config.json`, `assets/tflm_version.txt` and TF
    Serving warm-up requests. It is written under a hidden, non-numeric
    temporary name inside `base_dir` and renamed into place at the end, so TF
    Serving never sees a half-written version.

    Args:
        model: a `CausalLM`.
        base_dir: the model's base path as TF Serving sees it.
        tokenizer: defaults to `model.tokenizer`.
        version: defaults to one more than the highest existing version.
        overwrite: replace an existing version.
        jit_compile: compile the decode loop with XLA (needs TF Serving's
            `--xla_cpu_compilation_enabled=true`).
        warmup: write `assets.extra/tf_serving_warmup_requests`.
        weights: export a copy converted to `"bfloat16"` or `"int8"`
            weights (see `tflm.models.weights`); default: as `model` is.
    """
    tokenizer = tokenizer or model.tokenizer
    model = weights_lib.converted(model, weights) if weights else model
    if tokenizer is None:
        raise ValueError(
            "Export needs the model's tokenizer: load the model with "
            "tflm.modeldir.load or pass tokenizer=."
        )
    base_dir = os.path.abspath(base_dir)
    os.makedirs(base_dir, exist_ok=True)
    target = _target(base_dir, version, overwrite)
    tmp = tempfile.mkdtemp(prefix=".tflm-export-", dir=base_dir)
    try:
        module = signatures_lib.ServingModule(model, tokenizer, jit_compile)
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        _write_assets(tmp, model, tokenizer)
        if warmup:
            warmup_lib.write_warmup(tmp)
        _make_readable(tmp)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.debug("Exported SavedModel to %s", target)
    return target
