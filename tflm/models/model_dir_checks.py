"""Checks of a model directory's files, before anything is built.

`check_weights` reads only the header of `model.weights.h5` (names, shapes,
offsets), so a `config.json` whose sizes do not fit the weights is refused
before the model is built: no allocation of what the config claims.
"""

from __future__ import annotations

import os
import re
from typing import Any

import h5py

from tflm import errors

_ROOT = "layers/backbone/layers/"
_BLOCK = re.compile(rf"^{_ROOT}(decoder_block(?:_\d+)?)/")


def read_header(path: str) -> dict[str, tuple]:
    """Shapes of the weights stored in an `.h5` file, by dataset name.

    Raises:
        InputError: the file is not HDF5, or is cut short.
    """
    shapes, cut = {}, []
    size = os.path.getsize(path)
    try:
        with h5py.File(path, "r") as f:

            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    shapes[name] = tuple(item.shape)
                    offset = item.id.get_offset()
                    length = item.id.get_storage_size()
                    if offset is not None and offset + length > size:
                        cut.append(name)

            f.visititems(visit)
    except (OSError, RuntimeError, ValueError) as err:
        raise errors.InputError(
            f"{path} is not a readable weights file: {err}"
        ) from None
    if cut:
        raise errors.InputError(
            f"{path} is truncated: {len(cut)} weight(s) end past the end of "
            f"the file (first: {cut[0]}). Restore it from a copy or export "
            "the model again."
        )
    return shapes


def check_shapes(
    path: str, shapes: dict[str, tuple], backbone: dict[str, Any]
) -> None:
    """Raises when the sizes in a backbone config do not fit the weights.

    Compares `num_layers`, `vocabulary_size`, `hidden_dim`,
    `intermediate_dim` and `max_sequence_length`, the sizes that decide how
    much memory the model takes; the remaining settings are checked when the
    weights are loaded.
    """
    blocks = {m[1] for name in shapes if (m := _BLOCK.match(name))}
    wanted = {"num_layers": backbone.get("num_layers")}
    found = {"num_layers": len(blocks)}
    pairs = [
        ("reversible_embedding/vars/0", ("vocabulary_size", "hidden_dim")),
        ("position_embedding/vars/0", ("max_sequence_length", "hidden_dim")),
        ("decoder_block/mlp_out/vars/0", ("intermediate_dim", "hidden_dim")),
    ]
    for name, keys in pairs:
        shape = shapes.get(_ROOT + name)
        if shape is None or len(shape) != len(keys):
            continue
        for key, size in zip(keys, shape, strict=True):
            wanted[key], found[key] = backbone.get(key), size
    if not blocks:
        del wanted["num_layers"], found["num_layers"]
    wrong = sorted(k for k in wanted if wanted[k] != found[k])
    if wrong:
        details = ", ".join(
            f"{k}={wanted[k]!r} (the weights have {found[k]})" for k in wrong
        )
        raise errors.InputError(
            f"{path} does not fit config.json: it says {details}. Restore "
            "the config.json that was saved with these weights."
        )
