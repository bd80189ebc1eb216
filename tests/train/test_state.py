"""Training state files: corrupt or hostile `.npz` files are refused."""

import os

import keras
import numpy as np
import pytest

from tflm import errors
from tflm.train import state


class _Trap:
    """Unpickling this creates a file: proof that a pickle was run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def optimizer():
    optimizer = keras.optimizers.AdamW()
    optimizer.build([keras.Variable(np.zeros(2, "float32"))])
    return optimizer


def _write(directory, content):
    path = directory / state.OPTIMIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_pickle_in_optimizer_npz_is_never_loaded(tmp_path, optimizer):
    marker = tmp_path / "pickle-ran"
    path = tmp_path / state.OPTIMIZER_FILE
    path.parent.mkdir(parents=True)
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(str(marker))
    with open(path, "wb") as f:
        np.savez(f, trap=trap)
    with pytest.raises(errors.InputError, match="optimizer.npz"):
        state.restore_optimizer(optimizer, str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04cut"])
def test_corrupt_optimizer_npz_is_named(tmp_path, optimizer, content):
    _write(tmp_path, content)
    with pytest.raises(errors.InputError, match="is missing or corrupt"):
        state.restore_optimizer(optimizer, str(tmp_path))


def test_missing_rng_npz_is_named(tmp_path):
    from tflm.models import CausalLM

    model = CausalLM.from_preset("tiny", dropout=0.1)
    with pytest.raises(errors.InputError, match="rng.npz"):
        state.restore_rng(model, str(tmp_path))
    assert not os.path.exists(tmp_path / state.RNG_FILE)
