"""A run's optimizer: `tflm.models.optimizer` with a `TrainConfig`'s settings.

The optimizer itself (AdamW, the learning-rate schedule and the
mixed-precision wrapper) lives with the model, so that `CausalLM.compile()`
uses it too.
"""

from __future__ import annotations

import keras

from tflm.models import optimizer as model_optimizer
from tflm.train import config as config_lib


def from_config(
    config: config_lib.TrainConfig, total_steps: int, **kwargs
) -> keras.optimizers.Optimizer:
    """tflm's optimizer with a `TrainConfig`'s settings.

    Args:
        config: the run's settings (already range-checked).
        total_steps: updates in the run.
        **kwargs: Passed to `tflm.models.optimizer.make_optimizer`
            (`sum_gradients`).
    """
    floor = config.min_learning_rate
    return model_optimizer.make_optimizer(
        learning_rate=config.learning_rate,
        min_learning_rate=config.learning_rate / 10 if floor is None else floor,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        schedule=config.schedule,
        weight_decay=config.weight_decay,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
        clip_norm=config.clip_norm,
        precision=config.precision,
        **kwargs,
    )
