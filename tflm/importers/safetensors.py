"""Reads `.safetensors` files tensor by tensor, without loading them whole.

The format: a little-endian u64 `N`, `N` bytes of JSON mapping each tensor
name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets into the
data after the header; an optional `"__metadata__"` entry), then the data.
The header is checked against the file size when the file is opened, so a
truncated download is reported before anything is read.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import numpy as np

from tflm.importers import weights

# Safetensors dtype -> numpy dtype it is read as. BF16 is read as uint16 and
# widened to float32 by `read`.
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 2**20


class SafetensorsFile:
    """One `.safetensors` file, opened for reading tensors in row chunks.

    Args:
        path: the file.

    Raises:
        ValueError: the file is not safetensors, or is truncated; the
            message names the file and, for truncation, the first tensor
            whose data is missing.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = open(self.path, "rb")
        try:
            self._entries, self._data_start = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self.path}: {message}")

    def _read_header(self) -> tuple[dict, int]:
        size = os.fstat(self._file.fileno()).st_size
        prefix = self._file.read(8)
        if len(prefix) < 8:
            raise self._error(f"not a safetensors file ({size} bytes).")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER or self._file.read(1) not in (b"{", b""):
            raise self._error(
                "not a safetensors file: it does not start with a header "
                "length and a JSON header."
            )
        if length > size - 8:
            raise self._error(
                f"truncated: the header needs {length} bytes after the first "
                f"8, but the file has {size} bytes in all."
            )
        self._file.seek(8)
        try:
            header = json.loads(self._file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._error(
                f"not a safetensors file (header is not JSON: {err})."
            ) from None
        if not isinstance(header, dict):
            raise self._error("not a safetensors file (header is not a map).")
        header.pop("__metadata__", None)
        data_size = size - 8 - length
        for name, entry in header.items():
            self._check_entry(name, entry)
        cut = [n for n, e in header.items() if e["data_offsets"][1] > data_size]
        if cut:
            first = min(cut, key=lambda n: header[n]["data_offsets"][0])
            raise self._error(
                f"truncated: tensor {first!r} ends at byte "
                f"{header[first]['data_offsets'][1]} of the data, which has "
                f"{data_size} bytes ({len(cut)} tensor(s) cut). Download the "
                "file again."
            )
        return header, 8 + length

    def _check_entry(self, name: str, entry) -> None:
        try:
            dtype = np.dtype(DTYPES[entry["dtype"]])
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise self._error(
                f"tensor {name!r} has an unreadable header entry {entry!r} "
                f"(dtypes read: {', '.join(DTYPES)})."
            ) from None
        if end - begin != dtype.itemsize * int(np.prod(shape)):
            raise self._error(
                f"tensor {name!r}: data_offsets {[begin, end]} do not fit "
                f"shape {shape} of {entry['dtype']}."
            )

    def keys(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> str:
        """The safetensors dtype name, such as `"F32"`."""
        return self._entries[name]["dtype"]

    def read(self, name: str, start: int = 0, stop: int | None = None):
        """Rows `[start, stop)` of tensor `name`, as a new numpy array.

        Floating-point tensors come back as float32, others as stored.
        """
        entry = self._entries[name]
        shape = entry["shape"]
        dtype = np.dtype(DTYPES[entry["dtype"]])
        rows = shape[0] if shape else 1
        stop = rows if stop is None else min(stop, rows)
        row_bytes = dtype.itemsize * int(np.prod(shape[1:]))
        self._file.seek(self._data_start + entry["data_offsets"][0])
        self._file.seek(start * row_bytes, os.SEEK_CUR)
        out = np.empty((stop - start, *shape[1:]) if shape else (), dtype)
        if self._file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise self._error(f"tensor {name!r} ends early: truncated.")
        if entry["dtype"] == "BF16":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        elif out.dtype.kind == "f" and out.dtype != np.float32:
            out = out.astype(np.float32)
        return out

    def chunks(self, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """Yields `(first row, rows)` of `name`, a few MiB at a time."""
        shape = self.shape(name)
        if len(shape) < 2:
            yield 0, self.read(name)
            return
        row_bytes = 4 * int(np.prod(shape[1:]))
        yield from weights.row_chunks(
            lambda start, stop: self.read(name, start, stop),
            shape[0],
            row_bytes,
        )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
