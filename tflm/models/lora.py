"""LoRA: train low-rank adapters on a frozen model, merge them for serving.

`enable_lora(model, rank)` swaps the targeted projections of every decoder
block for `tflm.layers.LoRADense` layers (same names, same kernel and bias)
and freezes every other variable, so `fit` (through `CausalLM.compile` or
`tflm.train.LMTrainer`) trains the adapters only and the optimizer holds
state for them only. The full forward pass and the cached decode path both
run through the swapped layers, so `generate` applies the adapters.

Targets are `"query"`, `"key"`, `"value"`, `"output"` (attention) and
`"mlp_in"`, `"mlp_out"`. With a fused query/key/value projection (GPT-2's),
query, key and value adapters each write only their block of its columns.

A model directory of a LoRA model (`tflm.models.model_dir.save`) keeps the
base weights in `model.weights.h5` under the keys of a plain model (they
load into one), or, for a fine-tune of a model directory, by reference to
that parent, and the adapters apart in `adapters.npz`, recorded as
`"lora": {"rank", "alpha", "targets"}` in `config.json`. `merge_lora` folds
the adapters into the kernels (`W += alpha / rank * A @ B`) and leaves a
plain model, with no extra ops; `merged` does it on a copy (for export).
`tflm.models.lora_storage` reads and writes the adapters of a directory.

Example:
>>> from tflm.models import causal_lm
>>> lm = causal_lm.CausalLM.from_preset("tiny")
>>> enable_lora(lm, rank=2)
>>> sorted(adapter_weights(lm))[:2]
['decoder_0/query/lora_a', 'decoder_0/query/lora_b']
>>> lora_config(lm)
{'rank': 2, 'alpha': 2.0, 'targets': ['query', 'value']}
>>> merge_lora(lm)
>>> lora_config(lm) is None
True
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from collections.abc import Sequence

import keras
import numpy as np

from tflm import errors
from tflm.layers import lora as lora_layers

logger = logging.getLogger("tflm")

TARGETS = ("query", "key", "value", "output", "mlp_in", "mlp_out")
DEFAULT_TARGETS = ("query", "value")


def _slots(block, targets) -> dict:
    """`{(parent, attribute): [[target, start, width], ...]}` for a block."""
    attention = block.attention
    hidden = attention.num_heads * attention.head_dim
    kv = attention.num_key_value_heads * attention.head_dim
    columns = {"query": (0, hidden), "key": (hidden, kv)}
    columns["value"] = (hidden + kv, kv)
    slots = {}
    for target in targets:
        if target in columns and attention.fused_qkv:
            key, column = (attention, "query_key_value"), columns[target]
        elif target in columns:
            key, column = (attention, target), (0, columns[target][1])
        elif target == "output":
            key, column = (attention, "output_dense"), (0, hidden)
        else:
            key = (block, target)
            column = (0, getattr(block, target).units)
        slots.setdefault(key, []).append([target, *column])
    return slots


def _check_targets(targets) -> list[str]:
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise errors.InputError(
            f"LoRA targets must be distinct names from {', '.join(TARGETS)}. "
            f"Received: targets={targets!r}."
        )
    return [t for t in TARGETS if t in targets]


def _check_rank(rank, model, slots) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise errors.InputError(
            "The LoRA rank must be a positive integer. Received: "
            f"rank={rank!r}."
        )
    for (parent, attr), blocks in slots.items():
        in_dim = getattr(parent, attr).kernel.shape[0]
        for target, _, width in blocks:
            if rank > min(in_dim, width):
                raise errors.InputError(
                    f"The LoRA rank must be at most {min(in_dim, width)}, the "
                    f"smaller side of the {target} projection ({in_dim} x "
                    f"{width}). Received: rank={rank}."
                )


_ATTRIBUTES = ("query_key_value", "query", "key", "value", "output_dense")


def adapted_layers(model) -> list[tuple]:
    """`(block name, parent, attribute, layer)` per adapted projection."""
    found = []
    for block in model.backbone.blocks:
        for parent, names in (
            (block.attention, _ATTRIBUTES),
            (block, ("mlp_in", "mlp_out")),
        ):
            for name in names:
                layer = getattr(parent, name, None)
                if isinstance(layer, lora_layers.LoRADense):
                    found.append((block.name, parent, name, layer))
    return found


def _swap(parent, attr: str, new) -> None:
    """Puts `new` in place of `parent.<attr>`, at the same tracking slot (so
    the variable order, which `get_weights` follows, stays the same)."""
    parent._tracker.replace_tracked_value("layers", getattr(parent, attr), new)
    setattr(parent, attr, new)


def _rebuilt(old, layer_class, **extra):
    """A built `layer_class` with `old`'s config, name and variable paths."""
    config = {**old.get_config(), **extra, "dtype": old.dtype_policy}
    for key in ("rank", "alpha", "blocks", "lora_rank", "lora_alpha"):
        if key not in extra:
            config.pop(key, None)
    new = layer_class.from_config(config)
    # Build under the parent's scope: variable paths stay as they were.
    with contextlib.ExitStack() as scopes:
        for part in old.kernel.path.split("/")[:-2]:
            scopes.enter_context(keras.name_scope(part))
        new.build((None, old.kernel.shape[0]))
    return new


def enable_lora(
    model,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
) -> None:
    """Adds LoRA adapters to `model` in place and freezes everything else.

    Call it before `compile` (the optimizer must see the new trainable
    variables). See the module docstring.

    Args:
        model: a float32 `tflm.models.CausalLM` without adapters.
        rank: int. Must be in `[1, min(in, out)]` of every targeted block.
        alpha: float. The update is scaled by `alpha / rank`; defaults to
            `rank` (a scale of 1).
        targets: which projections of each decoder block get adapters:
            names from `TARGETS`.

    Raises:
        InputError: an unknown target, a bad rank, a model with adapters
            already, or one with bfloat16/int8 weights.
    """
    from tflm.models import weights as weights_lib

    targets = _check_targets(targets)
    if lora_config(model) is not None:
        raise errors.InputError(
            "The model has LoRA adapters already; merge_lora(model) first."
        )
    if weights_lib.weights_of(model) != "float32":
        raise errors.InputError(
            "LoRA trains on float32 weights. Received: a model with "
            f"{weights_lib.weights_of(model)} weights."
        )
    if alpha is not None and (isinstance(alpha, bool) or alpha <= 0):
        raise errors.InputError(
            f"The LoRA alpha must be positive. Received: alpha={alpha!r}."
        )
    plans = [_slots(block, targets) for block in model.backbone.blocks]
    _check_rank(rank, model, plans[0])
    for variable in model.variables:
        variable.trainable = False
    for slots in plans:
        for (parent, attr), blocks in slots.items():
            old = getattr(parent, attr)
            new = _rebuilt(
                old,
                lora_layers.LoRADense,
                rank=rank,
                alpha=alpha,
                blocks=blocks,
            )
            new._kernel.assign(old._kernel)
            if old.bias is not None:
                new.bias.assign(old.bias)
            _swap(parent, attr, new)
    logger.debug("LoRA rank %d on %s.", rank, ", ".join(targets))


def lora_config(model) -> dict | None:
    """`{"rank", "alpha", "targets"}` of `model`'s adapters, or None."""
    found = adapted_layers(model)
    if not found:
        return None
    first, *_, layer = found[0]
    names = {n for b, *_, lyr in found if b == first for n, *_ in lyr.blocks}
    targets = [t for t in TARGETS if t in names]
    return {"rank": layer.rank, "alpha": layer.alpha, "targets": targets}


def adapter_weights(model) -> dict[str, np.ndarray]:
    """The adapters as arrays, keyed `"<block>/<target>/lora_a"` (or `_b`)."""
    return {
        name: keras.ops.convert_to_numpy(variable)
        for name, variable in adapter_variables(model).items()
    }


def adapter_variables(model) -> dict:
    """The adapter variables, keyed as in `adapter_weights`."""
    variables = {}
    for block_name, *_, layer in adapted_layers(model):
        pairs = zip(layer.blocks, layer.lora_a, layer.lora_b, strict=True)
        for (target, *_), a, b in pairs:
            variables[f"{block_name}/{target}/lora_a"] = a
            variables[f"{block_name}/{target}/lora_b"] = b
    return variables


def load_adapter_weights(model, weights: Mapping[str, np.ndarray]) -> None:
    """Assigns `weights` (as `adapter_weights` returns) to `model`'s adapters.

    Raises:
        InputError: the names or shapes do not match the model's adapters.
    """
    variables = adapter_variables(model)
    if sorted(weights) != sorted(variables):
        missing = sorted(set(variables) - set(weights))
        extra = sorted(set(weights) - set(variables))
        raise errors.InputError(
            "The adapter weights do not fit the model's adapters: missing "
            f"{missing[:4]}, unexpected {extra[:4]}."
        )
    for name, variable in variables.items():
        value = np.asarray(weights[name])
        if tuple(value.shape) != tuple(variable.shape):
            raise errors.InputError(
                f"Adapter {name} has shape {tuple(value.shape)}; the model's "
                f"is {tuple(variable.shape)}."
            )
    for name, variable in variables.items():
        variable.assign(np.asarray(weights[name], variable.dtype))


def merge_lora(model) -> None:
    """Folds the adapters into the kernels, in place; a plain model remains.

    Every variable is trainable again afterwards. Nothing happens to a
    model without adapters.
    """
    found = adapted_layers(model)
    if not found:
        return
    for _, parent, attr, old in found:
        new = _rebuilt(old, keras.layers.Dense)
        new.kernel.assign(keras.ops.cast(old.merged_kernel(), new.kernel.dtype))
        if old.bias is not None:
            new.bias.assign(old.bias)
        _swap(parent, attr, new)
    for variable in model.variables:
        if "seed_generator_state" not in variable.path:
            variable.trainable = True
    logger.debug("Merged the LoRA adapters into the base weights.")


def merged(model):
    """A merged copy of `model` (with its tokenizer); `model` is kept.

    Returns `model` itself when it has no adapters.
    """
    if lora_config(model) is None:
        return model
    from tflm.models import weights as weights_lib

    copy = weights_lib.clone(model)  # with adapters
    merge_lora(copy)
    return copy
