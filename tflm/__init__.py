"""tflm: GPT-style language models with Keras 3 and TensorFlow.

The public API, loaded on first use so that `import tflm` stays cheap:

>>> import tflm
>>> model = tflm.CausalLM.from_preset("tiny")  # or a model directory
>>> model.backbone.num_layers
2

- `tflm.CausalLM`, `tflm.Backbone`; `tflm.from_preset(name_or_dir)` and
  `tflm.load(directory)` (both `CausalLM.from_preset`), and
  `model.save_to_preset(directory)`.
- Tokenizers: `tflm.SentencePieceTokenizer`, `tflm.GPT2BPETokenizer`,
  `tflm.ByteTokenizer`, `tflm.Tokenizer`, `tflm.load_tokenizer`.
- `tflm.make_dataset` (text files to training batches).
- `tflm.train` (`tflm.train.train(TrainConfig(...))`, `TrainConfig`) and
  `tflm.export` (`tflm.export.export(model, base_dir)`).
- `tflm.InputError`, the error for bad input.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Backbone": "tflm.models.backbone",
    "ByteTokenizer": "tflm.tokenizers",
    "CausalLM": "tflm.models.causal_lm",
    "GPT2BPETokenizer": "tflm.tokenizers",
    "InputError": "tflm.errors",
    "SentencePieceTokenizer": "tflm.tokenizers",
    "Tokenizer": "tflm.tokenizers",
    "load_tokenizer": "tflm.tokenizers",
    "make_dataset": "tflm.data.pipeline",
}
_SUBPACKAGES = ("export", "train")

__all__ = sorted([*_EXPORTS, *_SUBPACKAGES, "from_preset", "load"])


def from_preset(preset, **overrides):
    """`tflm.CausalLM.from_preset`: a model directory or a preset name."""
    from tflm.models import causal_lm

    return causal_lm.CausalLM.from_preset(preset, **overrides)


def load(directory, **overrides):
    """Loads a model directory, with its tokenizer attached.

    Same as `tflm.CausalLM.from_preset(directory)`, for a directory only.
    """
    from tflm.models import causal_lm
    from tflm.models import model_dir

    return model_dir.load_model(causal_lm.CausalLM, directory, **overrides)


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tflm.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tflm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted({*globals(), *__all__})
