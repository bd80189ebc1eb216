"""The model directory, under its old name: see `tflm.models.model_dir`.

Kept so that `from tflm import modeldir` goes on working; new code uses
`tflm.CausalLM.from_preset(directory)`, `model.save_to_preset(directory)`
and `tflm.models.model_dir`.
"""

from __future__ import annotations

import os

from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.models.model_dir import CONFIG_FILE
from tflm.models.model_dir import FORMAT_VERSION
from tflm.models.model_dir import MANAGED
from tflm.models.model_dir import TOKENIZER_DIR
from tflm.models.model_dir import TRAIN_DIR
from tflm.models.model_dir import WEIGHTS_FILE
from tflm.models.model_dir import backbone_config
from tflm.models.model_dir import check_target
from tflm.models.model_dir import is_model_dir
from tflm.models.model_dir import read_config
from tflm.models.model_dir import recover
from tflm.models.model_dir import save
from tflm.models.model_dir import validate
from tflm.models.model_dir import write_config


def load(
    directory: str | os.PathLike,
    *,
    dtype: str | None = None,
    weights: str | None = None,
) -> causal_lm.CausalLM:
    """`CausalLM.from_preset(directory)` for a model directory; `weights`
    converts (`"float32"` casts up or dequantizes stored bf16/int8)."""
    return model_dir.load_model(
        causal_lm.CausalLM, directory, dtype=dtype, weights=weights
    )


__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "MANAGED",
    "TOKENIZER_DIR",
    "TRAIN_DIR",
    "WEIGHTS_FILE",
    "backbone_config",
    "check_target",
    "is_model_dir",
    "load",
    "read_config",
    "recover",
    "save",
    "validate",
    "write_config",
]
