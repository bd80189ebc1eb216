"""Graph-mode generation: one decode loop and its samplers."""

from tflm.generation.loop import STOP_REASONS
from tflm.generation.loop import generate
from tflm.generation.samplers import sample

__all__ = ["STOP_REASONS", "generate", "sample"]
