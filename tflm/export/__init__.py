"""Exports: the SavedModel with the serving contract's signatures
(`export`), and the way out to other runtimes: the Hugging Face layout
(`to_huggingface`), a LoRA fine-tune's adapters for PEFT (`to_peft`) and
one GGUF file for llama.cpp (`to_gguf`)."""

from tflm.export.gguf import to_gguf
from tflm.export.huggingface import to_huggingface
from tflm.export.peft import to_peft
from tflm.export.saved_model import existing_versions
from tflm.export.saved_model import export
from tflm.export.signatures import ServingModule

__all__ = [
    "ServingModule",
    "existing_versions",
    "export",
    "to_gguf",
    "to_huggingface",
    "to_peft",
]
