"""Training: strategies, optimizer, `fit` with checkpoints and resume.

Names are imported on first use, so that importing `tflm.train.config`
(for the CLI flags) does not load TensorFlow.
"""

from tflm import lazy

_EXPORTS = {
    "AdamW": "tflm.models.optimizer",
    "LMTrainer": "tflm.train.trainer",
    "TrainConfig": "tflm.train.config",
    "TrainResult": "tflm.train.fit",
    "WarmupDecay": "tflm.models.optimizer",
    "evaluate": "tflm.train.evaluate",
    "make_optimizer": "tflm.models.optimizer",
    "resolve_strategy": "tflm.train.strategy",
    "train": "tflm.train.fit",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy.exports(__name__, _EXPORTS)
