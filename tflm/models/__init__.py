"""Backbone, causal LM and presets."""

from tflm.models.backbone import Backbone
from tflm.models.causal_lm import CausalLM
from tflm.models.presets import PRESETS
from tflm.models.presets import get_preset

__all__ = ["PRESETS", "Backbone", "CausalLM", "get_preset"]
