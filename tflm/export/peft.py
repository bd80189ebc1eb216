"""A LoRA fine-tune's adapters in PEFT's format (`--adapters-only`).

`to_peft(model, directory)` writes `adapter_model.safetensors` and
`adapter_config.json`, so that `peft.PeftModel.from_pretrained(base,
directory)`, where `base` is the model without its adapters as
`tflm.export.huggingface.to_huggingface` writes it, computes what `model`
computes.

PEFT adapts whole Hugging Face modules: `W' = W + (lora_alpha / r) * B @ A`.
A tflm adapter writes a block of a projection's output columns
(`tflm.layers.lora.LoRADense`), and a projection may be several modules
(Llama's `gate_proj` and `up_proj` are tflm's `mlp_in`) or a module may
hold several adapters (GPT-2's `c_attn` is the fused query/key/value). Each
module therefore gets every adapter that overlaps its columns: their A's
side by side, each B cut to the module's columns and given its own rows,
zeros elsewhere. That is rank `n * rank` for `n` adapters, with
`lora_alpha = n * alpha` so the scale stays `alpha / rank`: the update is
exact, not approximated. Modules whose rank is not the most common one are
listed in `rank_pattern` and `alpha_pattern`. GPT-2's `Conv1D` modules
store `[in, out]`: the config says `fan_in_fan_out: true`.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from tflm import atomic
from tflm import errors
from tflm.export import huggingface
from tflm.export import safetensors
from tflm.models import lora as lora_lib
from tflm.tokenizers import hf_files

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
OWNED = (ADAPTER_FILE, CONFIG_FILE)
# Where a family's tensor names sit in its `*ForCausalLM` module tree.
_MODULE_PREFIX = {"gpt2": "transformer."}
# `h.0.attn.c_attn` -> `attn.c_attn`: a module's name within its layer.
_IN_LAYER = re.compile(r"^.*?\.\d+\.(.+)$")


class Module(NamedTuple):
    """One Hugging Face module's adapter, as PEFT stores it.

    Fields:
        name: the module's path in the `*ForCausalLM` model.
        lora_a: `(r, in)`, PEFT's `lora_A.weight`.
        lora_b: `(out, r)`, PEFT's `lora_B.weight`.
        fan_in_fan_out: the module stores `[in, out]` (GPT-2's `Conv1D`).
    """

    name: str
    lora_a: np.ndarray
    lora_b: np.ndarray
    fan_in_fan_out: bool


def to_peft(
    model,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    model_type: str | None = None,
    base_model: str | None = None,
) -> str:
    """Writes `model`'s LoRA adapters as a PEFT adapter folder.

    Args:
        model: a `tflm.CausalLM` with LoRA adapters (`enable_lora`).
        directory: the folder to write, atomically.
        overwrite: replace the adapter files of an earlier export there.
        model_type: as given to `to_huggingface` for the base model.
        base_model: recorded as `base_model_name_or_path` (the base
            model's Hugging Face folder or Hub name); `None` if not given.

    Returns:
        The folder's real path.

    Raises:
        InputError: a model without adapters, an architecture without a
            transformers counterpart, an adapter no Hugging Face module
            takes exactly, or a folder holding an earlier export and no
            `overwrite`.
    """
    modules = peft_modules(model, model_type)
    config = adapter_config(modules, lora_lib.lora_config(model), base_model)
    tensors = []
    for module in modules:
        for part, value in (("A", module.lora_a), ("B", module.lora_b)):
            tensors.append(
                safetensors.Tensor(
                    f"base_model.model.{module.name}.lora_{part}.weight",
                    value.shape,
                    lambda value=value: value,
                )
            )

    def write(folder: str) -> None:
        safetensors.write(
            folder, tensors, max_shard_bytes=None, filename=ADAPTER_FILE
        )
        hf_files.write_json(
            os.path.join(folder, CONFIG_FILE), config, sort_keys=True
        )

    path = atomic.write_directory(
        atomic.resolve(directory), write, overwrite=overwrite, owned=OWNED
    )
    logger.debug("Wrote %s (%d LoRA modules).", path, len(modules))
    return path


def peft_modules(model, model_type: str | None = None) -> list[Module]:
    """`model`'s adapters per Hugging Face module, in the family's names.

    Raises:
        InputError: no adapters, no Hugging Face counterpart, or an adapter
            whose columns no module of the mapping covers.
    """
    if lora_lib.lora_config(model) is None:
        raise errors.InputError(
            "--adapters-only needs a LoRA fine-tune (a model with adapters); "
            "this model has none: export it without --adapters-only."
        )
    hf, targets = huggingface.mapping(model, model_type)
    prefix = _MODULE_PREFIX.get(hf["model_type"], "")
    by_kernel = collections.defaultdict(list)
    for name, target in targets.items():
        if name.endswith(".weight"):
            by_kernel[target.variable.path].append((name[:-7], target))
    modules = []
    for *_, layer in lora_lib.adapted_layers(model):
        modules += _layer_modules(
            layer, by_kernel[layer.kernel.path], prefix, hf["model_type"]
        )
    return modules


def _layer_modules(layer, entries, prefix: str, family: str) -> list[Module]:
    """The modules `entries` (`(name, Target)` of `layer`'s kernel) with
    the adapters of `layer` on their columns.

    Raises:
        InputError: an adapter whose columns no module covers.
    """
    lora_a = [np.asarray(a.numpy()) for a in layer.lora_a]
    lora_b = [np.asarray(b.numpy()) for b in layer.lora_b]
    found = []
    covered = np.zeros(layer.units, bool)
    for name, target in entries:
        width = target.width or layer.units
        covered[target.column : target.column + width] = True
        update = module_update(
            layer.blocks, lora_a, lora_b, target.column, width
        )
        if update is not None:
            a, b = update
            found.append(Module(prefix + name, a.T, b.T, not target.transpose))
    lost = [n for n, s, w in layer.blocks if not covered[s : s + w].all()]
    if lost:
        raise errors.InputError(
            f"the LoRA adapter {lost[0]} on {layer.kernel.path} has no "
            f"{family} module to go to exactly; export the merged model "
            "without --adapters-only."
        )
    return found


def module_update(
    blocks: Sequence,
    lora_a: Sequence[np.ndarray],
    lora_b: Sequence[np.ndarray],
    start: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The adapters of a `LoRADense` on its columns `[start, start + width)`.

    Args:
        blocks: the layer's `[name, column, size]` per adapter.
        lora_a: each adapter's A, `(in, rank)`.
        lora_b: each adapter's B, `(rank, size)`.
        start: the module's first column.
        width: the module's number of columns.

    Returns:
        `(A (in, n * rank), B (n * rank, width))` with `A @ B` the sum of the
        `n` overlapping adapters' updates on those columns, or `None` when
        no adapter writes them.

    Example:
    >>> a, b = module_update(
    ...     [["query", 0, 2], ["value", 4, 2]],
    ...     [np.ones((3, 1)), 2 * np.ones((3, 1))],
    ...     [np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])],
    ...     start=1,
    ...     width=4,
    ... )
    >>> a.shape, b.tolist()
    ((3, 2), [[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    """
    a_parts, b_parts = [], []
    for (_, column, size), a, b in zip(blocks, lora_a, lora_b, strict=True):
        low, high = max(column, start), min(column + size, start + width)
        if low >= high:
            continue
        rows = np.zeros((b.shape[0], width), np.float32)
        rows[:, low - start : high - start] = b[:, low - column : high - column]
        a_parts.append(np.asarray(a, np.float32))
        b_parts.append(rows)
    if not a_parts:
        return None
    return np.concatenate(a_parts, axis=1), np.concatenate(b_parts, axis=0)


def adapter_config(
    modules: Sequence[Module], lora: dict, base_model: str | None = None
) -> dict:
    """`adapter_config.json` for `modules`, as PEFT's `save_pretrained`
    writes it (the fields a plain LoRA needs).

    Args:
        modules: from `peft_modules`.
        lora: `{"rank", "alpha", ...}` of the tflm model.
        base_model: `base_model_name_or_path`.

    Raises:
        InputError: a module with different ranks in different layers, or
            both `[in, out]` and `[out, in]` modules.
    """
    ranks: dict[str, int] = {}
    for module in modules:
        match = _IN_LAYER.match(module.name)
        key = match.group(1) if match else module.name
        rank = module.lora_a.shape[0]
        if ranks.setdefault(key, rank) != rank:
            raise errors.InputError(
                f"{key} has LoRA rank {ranks[key]} in one layer and {rank} "
                "in another; PEFT needs one rank per module name."
            )
    fan_in_fan_out = {module.fan_in_fan_out for module in modules}
    if len(fan_in_fan_out) != 1:
        raise errors.InputError(
            "the model mixes [in, out] and [out, in] modules, which one "
            "PEFT fan_in_fan_out setting cannot describe."
        )

    def alpha(rank: int) -> float | int:
        value = float(lora["alpha"]) * (rank // lora["rank"])
        return int(value) if value.is_integer() else value

    (r, _), *_ = collections.Counter(ranks.values()).most_common(1)
    others = {key: rank for key, rank in ranks.items() if rank != r}
    return {
        "alpha_pattern": {key: alpha(rank) for key, rank in others.items()},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out.pop(),
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": alpha(r),
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": others,
        "revision": None,
        "target_modules": sorted(ranks),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
