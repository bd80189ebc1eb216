"""Backbone, causal LM and presets.

Names are imported on first use, so that importing `tflm.models.presets`
(for the CLI's flags) does not load Keras and TensorFlow.
"""

import importlib

_EXPORTS = {
    "Backbone": "tflm.models.backbone",
    "CausalLM": "tflm.models.causal_lm",
    "PRESETS": "tflm.models.presets",
    "get_preset": "tflm.models.presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tflm.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
