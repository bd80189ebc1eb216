"""Keras 3 layers for GPT-style decoders."""

from tflm.layers.attention import CausalSelfAttention
from tflm.layers.decoder import DecoderBlock
from tflm.layers.embedding import PositionEmbedding
from tflm.layers.lora import LoRADense
from tflm.layers.masks import attention_mask
from tflm.layers.masks import causal_mask
from tflm.layers.rotary import apply_rope
from tflm.layers.rotary import rope_tables

__all__ = [
    "CausalSelfAttention",
    "DecoderBlock",
    "LoRADense",
    "PositionEmbedding",
    "apply_rope",
    "attention_mask",
    "causal_mask",
    "rope_tables",
]
