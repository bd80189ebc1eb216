"""A Hugging Face checkpoint's safetensors file(s), copied tensor by tensor.

`model.safetensors`, or the shards `model.safetensors.index.json` lists,
are opened (headers checked, so a truncated download is named before any
copy); each tensor is then read a few MiB at a time straight into the
variable a family maps it to, transposed where PyTorch's `Linear` stores
`[out, in]` and Keras' `Dense` `[in, out]`. Memory stays near one copy of
the model.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.importers import safetensors
from tflm.importers import weights
from tflm.tokenizers import hf_files

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class Target(NamedTuple):
    """Where one checkpoint tensor goes.

    Fields:
        variable: the Keras variable.
        transpose: the tensor is `[out, in]` (a PyTorch `Linear`): its
            transpose fills `variable`'s columns `[column, column + out)`.
        column: the first column it fills (the halves of a fused SwiGLU
            `mlp_in` kernel); 0 otherwise.
        width: how many columns it fills; `None`: all of them.
    """

    variable: Any
    transpose: bool = False
    column: int = 0
    width: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape in the checkpoint."""
        shape = list(self.variable.shape)
        if self.width is not None:
            shape[-1] = self.width  # Columns of a kernel, or a bias slice.
        return tuple(reversed(shape)) if self.transpose else tuple(shape)

    def read(self) -> np.ndarray:
        """The tensor as the checkpoint holds it (what an export writes)."""
        value = np.asarray(self.variable.numpy())
        if self.width is not None:
            value = value[..., self.column : self.column + self.width]
        return value.T if self.transpose else value


class Checkpoint:
    """The safetensors file(s) of a checkpoint directory, by tensor name.

    Args:
        directory: the checkpoint directory.

    Raises:
        InputError: no weights file, a shard the index names that is
            missing, or a file that is not safetensors or is truncated.
    """

    def __init__(self, directory: str):
        index = os.path.join(directory, INDEX_FILE)
        if os.path.isfile(index):
            weight_map = hf_files.read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise errors.InputError(f"{index} has no weight_map.")
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(os.path.join(directory, WEIGHTS_FILE)):
            files = [WEIGHTS_FILE]
        else:
            raise errors.InputError(
                f"{os.path.join(directory, WEIGHTS_FILE)} is missing (PyTorch "
                "`.bin` files are not read; download the `.safetensors` one)."
            )
        self.files = []
        try:
            for name in files:
                path = os.path.join(directory, name)
                if not os.path.isfile(path):
                    raise errors.InputError(
                        f"{path} is missing: {INDEX_FILE} lists it. Download "
                        "every shard of the checkpoint."
                    )
                try:
                    self.files.append(safetensors.SafetensorsFile(path))
                except ValueError as err:
                    raise errors.InputError(str(err)) from None
        except BaseException:
            self.close()
            raise
        self.where = {n: f for f in self.files for n in f.keys()}

    @property
    def nbytes(self) -> int:
        """The size of the weight files."""
        return sum(os.path.getsize(f.path) for f in self.files)

    def copy_into(
        self, targets: dict[str, Target], ignored: tuple[str, ...] = ()
    ) -> None:
        """Copies every tensor of `targets` (checkpoint name -> `Target`).

        Tensors of the checkpoint that no target names and that do not end
        with one of `ignored` are logged as ignored.

        Raises:
            InputError: a missing tensor, one that is not floating point, or
                one whose shape does not fit its variable (file and tensor
                named).
        """
        for name, target in targets.items():
            if name not in self.where:
                raise errors.InputError(
                    f"{self.files[0].path}: tensor {name!r} is missing; the "
                    "files do not hold the model that config.json describes."
                )
            file = self.where[name]
            if not file.dtype(name).startswith(("F", "BF")):
                raise errors.InputError(
                    f"{file.path}: tensor {name!r} is {file.dtype(name)}, "
                    "not floating point."
                )
            try:
                _copy(file, name, target)
            except ValueError as err:
                raise errors.InputError(str(err)) from None
        extra = [
            n
            for n in self.where
            if n not in targets and not n.endswith(ignored)
        ]
        if extra:
            logger.warning(
                "Ignored %d tensors the model does not have: %s",
                len(extra),
                ", ".join(extra[:5]),
            )

    def close(self) -> None:
        for file in self.files:
            file.close()


def _copy(file: safetensors.SafetensorsFile, name: str, target: Target):
    shape = list(file.shape(name))
    if not target.transpose and target.width is not None:
        # A slice of a vector (the halves of a fused MLP bias): small.
        if shape != [target.width]:
            raise ValueError(
                f"{file.path}: tensor {name!r} has shape {shape}, but the "
                f"architecture in the checkpoint's config needs "
                f"{[target.width]}."
            )
        value = np.array(target.variable.numpy())
        value[target.column : target.column + target.width] = file.read(name)
        target.variable.assign(value)
        return
    if not target.transpose:
        weights.assign(
            target.variable, shape, file.chunks(name), file.path, name
        )
        return
    variable = target.variable
    expected = list(variable.shape)
    width = expected[1] if target.width is None else target.width
    if shape != [width, expected[0]]:
        raise ValueError(
            f"{file.path}: tensor {name!r} has shape {shape}, but the "
            "architecture in the checkpoint's config needs "
            f"{[width, expected[0]]}."
        )
    for start, rows in file.chunks(name):
        block = np.ascontiguousarray(np.asarray(rows, dtype=variable.dtype).T)
        first = target.column + start
        if isinstance(variable.value, tf.Variable):
            tf.raw_ops.ResourceStridedSliceAssign(
                ref=variable.value.handle,
                begin=[0, first],
                end=[expected[0], first + block.shape[1]],
                strides=[1, 1],
                value=block,
            )
        else:
            value = np.array(variable.numpy())
            value[:, first : first + block.shape[1]] = block
            variable.assign(value)
