"""Versioned, atomic SavedModel export for TF Serving and other apps.

A version is written whole into a hidden, non-numeric folder of the base
(`.tflm-export.tflm-tmp-*`, which TF Serving ignores) and then claimed with
one rename that fails if the version exists (`tflm.atomic`): two exports to
one base at once get different versions, and TF Serving never sees half a
version. Leftovers of killed exports are swept by the next export.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re

import tensorflow as tf

import tflm
from tflm import atomic
from tflm import errors
from tflm.export import host
from tflm.export import signatures as signatures_lib
from tflm.export import warmup as warmup_lib
from tflm.models import lora as lora_lib
from tflm.models import model_dir
from tflm.models import weights as weights_lib
from tflm.tokenizers import templates

logger = logging.getLogger("tflm")

CONFIG_ASSET = "tflm_config.json"
VERSION_ASSET = "tflm_version.txt"
STAGING = "tflm-export"


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


def signature_names(path: str) -> list[str]:
    """The signatures of the SavedModel at `path`, as written in its
    `saved_model.pb` (`serving_default` first)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    names = {
        name
        for graph in saved.meta_graphs
        if "serve" in graph.meta_info_def.tags
        for name in graph.signature_def
        if not name.startswith("__")  # __saved_model_init_op
    }
    return sorted(names, key=lambda name: (name != "serving_default", name))


def _check_version(base_dir: str, version, overwrite: bool) -> None:
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int):
        raise errors.InputError(
            f"--version must be an integer. Received: version={version!r}"
        )
    if version <= 0:
        raise errors.InputError(
            f"--version must be positive. Received: version={version}"
        )
    if os.path.lexists(os.path.join(base_dir, str(version))) and not overwrite:
        raise _exists(os.path.join(base_dir, str(version)))


def _exists(target: str) -> errors.InputError:
    return errors.InputError(
        f"{target} already exists. Pass --overwrite (overwrite=True) to "
        "replace it (see export/README.md: TF Serving does not reload a "
        "replaced version), or choose another --version."
    )


def _write_assets(directory: str, model, tokenizer, template) -> None:
    assets = os.path.join(directory, "assets")
    os.makedirs(assets, exist_ok=True)
    metadata = {"template": template} if template else None
    path = os.path.join(assets, CONFIG_ASSET)
    model_dir.write_config(path, model, tokenizer, metadata)
    with open(os.path.join(assets, VERSION_ASSET), "w") as f:
        f.write(tflm.__version__ + "\n")


def _claim(tmp: str, base_dir: str, version, overwrite: bool) -> str:
    """Moves `tmp` to its version folder and returns that path."""
    if version is not None:
        target = os.path.join(base_dir, str(version))
        if not atomic.publish(tmp, target, replace=overwrite):
            raise _exists(target)
        return target
    number = (existing_versions(base_dir) or [0])[-1] + 1
    while not atomic.publish(
        tmp, os.path.join(base_dir, str(number)), replace=False
    ):
        number += 1  # another export took it first
    return os.path.join(base_dir, str(number))


def _write(tmp: str, model, tokenizer, jit_compile: bool, warmup: bool):
    """Writes the SavedModel, its assets and its warm-up file into `tmp`."""
    module = signatures_lib.ServingModule(model, tokenizer, jit_compile)
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
    except tf.errors.OpError as err:
        if atomic.is_no_space(err):
            raise OSError(errno.ENOSPC, "No space left on device", tmp) from err
        raise
    _write_assets(tmp, model, tokenizer, module.template)
    if warmup:
        template = module.template
        warmup_lib.write_warmup(
            tmp,
            chat=template is not None,
            system=template is None
            or templates.FORMATS[template["name"]].system,
        )


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
    replay_warmup: bool = False,
) -> str:
    """Exports `model` to `base_dir/<version>/` and returns that path.

    The SavedModel holds the signatures of the serving contract
    (`serving_default`, `generate`, `beam_search`, `score`, `tokenize`,
    `detokenize`; `chat` for a model with a template, which
    `serving_default` then applies), the tokenizer as an asset,
    `assets/tflm_config.json` (what a model directory's `config.json`
    holds), `assets/tflm_version.txt` and TF Serving warm-up requests.

    Args:
        model: a `CausalLM`.
        base_dir: the model's base path as TF Serving sees it; a symbolic
            link is followed.
        tokenizer: defaults to `model.tokenizer`.
        version: defaults to one more than the highest existing version.
        overwrite: replace an existing `version` whole. TF Serving does not
            reload a version whose files change; see `export/README.md`.
        jit_compile: compile the decode loop with XLA (needs TF Serving's
            `--xla_cpu_compilation_enabled=true`).
        warmup: write `assets.extra/tf_serving_warmup_requests`.
        weights: export a copy converted to `"bfloat16"` or `"int8"`
            weights (see `tflm.models.weights`); default: as `model` is.
            `"bfloat16"` logs a warning on a CPU without the instructions
            that make it pay (`tflm.export.host`).
        replay_warmup: before the version is published, replay its warm-up
            requests as TF Serving does when it loads a version (a fresh
            process, seconds; `tflm export` does).

    Raises:
        InputError: no tokenizer, `base_dir` is a file, `version` exists
            without `overwrite`, or the disk filled up (nothing replaced).
        WarmupError: with `replay_warmup`, a warm-up request failed, so TF
            Serving would refuse the version (nothing published).
    """
    tokenizer = tokenizer or model.tokenizer
    model = lora_lib.merged(model)  # no adapter ops in the export
    model = weights_lib.converted(model, weights) if weights else model
    if weights == "bfloat16" and (note := host.bf16_warning(host.cpu_flags())):
        logger.warning(note)
    if tokenizer is None:
        raise errors.InputError(
            "Export needs the model's tokenizer: load the model with "
            "tflm.CausalLM.from_preset(model_dir) or pass tokenizer=."
        )
    base_dir = atomic.resolve(base_dir, "export --out")
    os.makedirs(base_dir, exist_ok=True)
    _check_version(base_dir, version, overwrite)
    atomic.sweep(base_dir, None, None)
    with contextlib.ExitStack() as stack:
        replay = None
        if warmup and replay_warmup:  # starts now, to overlap the export
            replay = stack.enter_context(warmup_lib.Replay(jit_compile))
        tmp = stack.enter_context(atomic.staged(base_dir, STAGING))
        _write(tmp, model, tokenizer, jit_compile, warmup)
        if replay:
            seconds = replay.run(tmp)
            logger.debug("Replayed the warm-up requests in %.1f s", seconds)
        target = _claim(tmp, base_dir, version, overwrite)
    logger.debug("Exported SavedModel to %s", target)
    return target
