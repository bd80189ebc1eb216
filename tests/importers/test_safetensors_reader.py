"""The safetensors reader: dtypes, row chunks, sharded checkpoints."""

import json
import struct

import gpt2_files
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from tflm.importers import gpt2
from tflm.importers import safetensors
from tflm.importers import weights


def _write_raw(path, entries):
    """A safetensors file from `{name: (dtype, shape, bytes)}`."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_reads_float_dtypes_as_float32_in_chunks(tmp_path, monkeypatch):
    x = np.arange(24, dtype=np.float32).reshape(6, 4) / 8
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    path = tmp_path / "t.safetensors"
    _write_raw(
        path,
        {
            "f16": ("F16", [6, 4], x.astype(np.float16).tobytes()),
            "bf16": ("BF16", [6, 4], bf16),
            "f32": ("F32", [6, 4], x.tobytes()),
        },
    )
    monkeypatch.setattr(weights, "CHUNK_BYTES", 40)  # 2 rows per chunk
    with safetensors.SafetensorsFile(path) as f:
        assert f.keys() == ["f16", "bf16", "f32"]
        for name in f.keys():
            chunks = list(f.chunks(name))
            assert [start for start, _ in chunks] == [0, 2, 4]
            joined = np.concatenate([rows for _, rows in chunks])
            assert joined.dtype == np.float32
            np.testing.assert_array_equal(joined, x)


def test_bad_header_entry_is_named(tmp_path):
    path = tmp_path / "t.safetensors"
    _write_raw(path, {"w": ("F32", [3], b"\0" * 8)})
    with pytest.raises(ValueError, match="tensor 'w': data_offsets"):
        safetensors.SafetensorsFile(path)
    _write_raw(path, {"w": ("Q7", [2], b"\0" * 8)})
    with pytest.raises(ValueError, match="tensor 'w' has an unreadable"):
        safetensors.SafetensorsFile(path)


def test_sharded_checkpoint(tmp_path, imported):
    tensors = gpt2_files.write_checkpoint(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        safetensors_numpy.save_file(
            {n: tensors[n] for n in part}, str(tmp_path / file)
        )
        weight_map.update(dict.fromkeys(part, file))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    model, _ = gpt2.load_hf_gpt2(tmp_path)
    x = {"token_ids": np.array([[1, 2, 3]]), "padding_mask": np.ones((1, 3))}
    np.testing.assert_allclose(
        model(x).numpy(), imported[0](x).numpy(), atol=1e-6
    )
