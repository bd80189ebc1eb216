"""The datasets of a run on task examples (`data_format="task"`).

The examples are read, checked and tokenized once (task sets are small),
then split: `validation_data` when given, else a fixed share
`validation_fraction` of the examples is held out.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm import tokenizers
from tflm.data import tasks
from tflm.train import config as config_lib


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Encoded windows (see `tasks.encode_examples`) of both splits."""

    train: tuple[np.ndarray, ...]
    validation: tuple[np.ndarray, ...] | None

    @property
    def train_count(self) -> int:
        return len(self.train[0])


def load(
    config: config_lib.TrainConfig,
    tokenizer: tokenizers.Tokenizer,
    sequence_length: int,
    template: dict,
) -> TaskData:
    """Reads, checks and encodes the run's examples.

    Raises:
        InputError: a bad example (file and line), or fewer training
            examples than one batch.
    """

    def encode(paths):
        examples = tasks.read_examples(
            paths,
            prompt_field=config.prompt_field,
            completion_field=config.completion_field,
            exclude=[config.out],
        )
        return tasks.encode_examples(
            examples,
            tokenizer,
            sequence_length,
            template,
            fit_longest=config.sequence_length is None,
        )

    windows = encode(config.data)
    validation = None
    if config.validation_data:
        validation = encode(config.validation_data)
    elif config.validation_fraction > 0:
        train, held = tasks.split_indices(
            len(windows[0]), config.validation_fraction
        )
        if len(held):
            validation = tasks.select(windows, held)
            windows = tasks.select(windows, train)
    if len(windows[0]) < config.batch_size:
        raise errors.InputError(
            f"{len(windows[0])} training example(s), fewer than one batch "
            f"(--batch-size {config.batch_size}). Add examples or lower "
            "--batch-size (or --validation-fraction)."
        )
    return TaskData(windows, validation)


def train_dataset(
    config: config_lib.TrainConfig, data: TaskData, skip: int = 0
) -> tf.data.Dataset:
    """Global batches in a seeded order, repeated, `skip` dropped."""
    dataset = tasks.to_dataset(
        data.train,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        repeat=True,
        drop_remainder=True,
    )
    return dataset.skip(skip) if skip else dataset


def total_steps(config: config_lib.TrainConfig, data: TaskData) -> int:
    """`config.steps`, or the steps `config.epochs` (default 1) take."""
    if config.steps is not None:
        return config.steps
    epochs = 1.0 if config.epochs is None else config.epochs
    per_epoch = data.train_count // config.batch_size
    return max(1, math.ceil(epochs * per_epoch))


def validation_dataset(
    config: config_lib.TrainConfig, data: TaskData
) -> tuple[tf.data.Dataset | None, int]:
    """`(repeated validation batches, batches per validation)`."""
    if data.validation is None:
        return None, 0
    batch = config.batch_size
    steps = config.eval_batches or math.ceil(len(data.validation[0]) / batch)
    once = tasks.to_dataset(data.validation, batch_size=batch)
    return once.repeat(), steps
