"""Tensors written as `.safetensors` files, sharded with an index.

The format: an 8-byte little-endian header length, a JSON header of
names, dtypes, shapes and byte ranges (padded to 8 bytes), then the bytes.
Tensors are produced and written one at a time, so memory holds one tensor
beyond the model. Above `max_shard_bytes` the tensors are split over
`model-00001-of-0000N.safetensors` files in order, with
`model.safetensors.index.json` (`metadata.total_size`, `weight_map`) as
transformers writes it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import ml_dtypes
import numpy as np

from tflm.importers import checkpoint
from tflm.tokenizers import hf_files

WEIGHTS_FILE = checkpoint.WEIGHTS_FILE
INDEX_FILE = checkpoint.INDEX_FILE
MAX_SHARD_BYTES = 2 * 2**30  # 2 GiB, the limit the issue and HF Hub use.
DTYPES = {
    "float32": ("F32", np.dtype("<f4")),
    "bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16)),
    "float16": ("F16", np.dtype("<f2")),
}


class Tensor(NamedTuple):
    """One tensor to write: its name, shape and a function giving it."""

    name: str
    shape: tuple[int, ...]
    value: Callable[[], np.ndarray]


def shard_names(count: int) -> list[str]:
    """The file names of `count` shards (`model.safetensors` for one)."""
    if count == 1:
        return [WEIGHTS_FILE]
    return [
        f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)
    ]


def _groups(tensors, itemsize: int, max_bytes: int) -> list[list[Tensor]]:
    groups: list[list[Tensor]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = int(np.prod(tensor.shape, dtype=np.int64)) * itemsize
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += nbytes
    return groups


def write(
    folder: str,
    tensors: Sequence[Tensor],
    dtype: str = "float32",
    max_shard_bytes: int | None = MAX_SHARD_BYTES,
    filename: str = WEIGHTS_FILE,
) -> list[str]:
    """Writes `tensors` in `dtype` into `folder`; returns the file names.

    Args:
        folder: an existing folder.
        tensors: in the order to write them.
        dtype: `float32`, `bfloat16` (rounded to nearest even) or
            `float16`.
        max_shard_bytes: the most bytes of tensors in one file (a single
            larger tensor gets a file of its own); `None`: one file.
        filename: the name of an unsharded file (PEFT's adapters are
            `adapter_model.safetensors`).
    """
    code, numpy_dtype = DTYPES[dtype]
    if max_shard_bytes is None:
        groups = [list(tensors)]
    else:
        groups = _groups(tensors, numpy_dtype.itemsize, max_shard_bytes)
    names = shard_names(len(groups)) if len(groups) > 1 else [filename]
    weight_map, total = {}, 0
    for name, group in zip(names, groups, strict=True):
        total += _write_file(os.path.join(folder, name), group, code,
                             numpy_dtype)  # fmt: skip
        weight_map.update({tensor.name: name for tensor in group})
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        hf_files.write_json(os.path.join(folder, INDEX_FILE), index)
        names.append(INDEX_FILE)
    return names


def _write_file(path: str, tensors, code: str, dtype: np.dtype) -> int:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        size = int(np.prod(tensor.shape, dtype=np.int64)) * dtype.itemsize
        header[tensor.name] = dict(
            dtype=code,
            shape=list(tensor.shape),
            data_offsets=[offset, offset + size],
        )
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for tensor in tensors:
            array = np.asarray(tensor.value())
            if tuple(array.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"tensor {tensor.name!r} has shape {array.shape}, not "
                    f"{tensor.shape}."
                )
            # At most one copy of a tensor: the cast (none for float32).
            array = np.asarray(array, np.float32).astype(dtype, copy=False)
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return offset
