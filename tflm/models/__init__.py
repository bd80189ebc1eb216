"""Backbone, causal LM and presets.

Names are imported on first use, so that importing `tflm.models.presets`
(for the CLI's flags) does not load Keras and TensorFlow.
"""

from tflm import lazy

_EXPORTS = {
    "Backbone": "tflm.models.backbone",
    "CausalLM": "tflm.models.causal_lm",
    "PRESETS": "tflm.models.presets",
    "get_preset": "tflm.models.presets",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy.exports(__name__, _EXPORTS)
