"""`train`: text files in, a trained model directory out; resumes by itself.

A run is a `TrainConfig`. The model directory `config.out` is written at
step 0, at every checkpoint and at the end (atomically, see
`tflm.modeldir`), with the state that resuming needs. Running the same
config again continues from the last checkpoint with the same data order and
learning-rate schedule, and does nothing when the run has finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import typing

import keras
import tensorflow as tf

from tflm import atomic
from tflm import errors
from tflm import modeldir
from tflm import tokenizers
from tflm.models import backbone as backbone_lib
from tflm.models import causal_lm
from tflm.models import presets
from tflm.train import callbacks as callbacks_lib
from tflm.train import config as config_lib
from tflm.train import divergence
from tflm.train import inputs
from tflm.train import optimizer as optimizer_lib
from tflm.train import state as state_lib
from tflm.train import strategy as strategy_lib
from tflm.train import trainer as trainer_lib
from tflm.train import validation

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Args:
        model: the trained `CausalLM` (with `tokenizer` set).
        step: the step training stopped at.
        start_step: the step this call started (resumed) from.
        validation_loss: the last validation loss of this call, if any.
        directory: the model directory.
    """

    model: causal_lm.CausalLM
    step: int
    start_step: int
    validation_loss: float | None
    directory: str


class _Data(typing.NamedTuple):
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    validation_steps: int


@dataclasses.dataclass
class _Run:
    config: config_lib.TrainConfig
    strategy: object
    chief: bool
    out: str
    saved: state_lib.TrainState | None
    tokenizer: tokenizers.Tokenizer
    backbone: dict
    sequence_length: int
    total_steps: int

    @property
    def start_step(self) -> int:
        return self.saved.step if self.saved else 0


def train(
    config: config_lib.TrainConfig,
    *,
    verbose: str | int = "auto",
    callbacks: list[keras.callbacks.Callback] | tuple = (),
) -> TrainResult:
    """Trains (or resumes training) the model `config` describes.

    Args:
        config: the run's settings.
        verbose: Keras `fit` verbosity (`0` silences the progress bar).
        callbacks: more Keras callbacks for `fit`.

    Returns:
        A `TrainResult`.

    Raises:
        InputError: bad settings or data, an output folder that is not a
            model directory, one from an incompatible run, or a run that
            diverged (a NaN loss; the last good checkpoint is kept).
    """
    run = _prepare(config)
    # One run at a time writes a model directory (`tflm.atomic.lock`).
    with atomic.lock(run.out) if run.chief else contextlib.nullcontext():
        return _train(run, config, verbose, callbacks)


def _train(run: _Run, config, verbose, callbacks) -> TrainResult:
    strategy_lib.check_workers_agree(
        run.strategy, start_step=run.start_step, total_steps=run.total_steps
    )
    if run.start_step >= run.total_steps:
        logger.info(
            "%s is trained to step %d of %d; nothing to do.",
            run.out,
            run.start_step,
            run.total_steps,
        )
        model = modeldir.load(run.out)
        return TrainResult(model, run.start_step, run.start_step, None, run.out)
    if run.saved:
        logger.info("Resuming %s from step %d.", run.out, run.start_step)
    # Datasets first: bad data fails before anything is written.
    data = _Data(
        inputs.train_dataset(
            config, run.tokenizer, run.sequence_length, skip=run.start_step
        ),
        *inputs.validation_dataset(config, run.tokenizer, run.sequence_length),
    )
    with run.strategy.scope():
        lm, trainer = _build(run)
    if run.chief and not run.saved:
        _save(run, lm, trainer.optimizer, 0)
    return _fit(run, lm, trainer, data, verbose, list(callbacks))


def _prepare(config: config_lib.TrainConfig) -> _Run:
    strategy = strategy_lib.resolve_strategy(config.strategy)
    chief = strategy_lib.is_chief(strategy)
    out = os.path.abspath(config.out)
    if chief:
        modeldir.recover(out)
    modeldir.check_target(out)
    saved = state_lib.read(out) if modeldir.is_model_dir(out) else None
    keras.utils.set_random_seed(config.seed)
    tokenizer = inputs.make_tokenizer(
        config, out if saved else None, strategy_lib.spans_workers(strategy)
    )
    backbone = _backbone_kwargs(config, tokenizer)
    if saved:
        _check_resume(out, saved, config, backbone)
    # `TrainConfig` checked that it fits the preset's context.
    sequence_length = config.sequence_length or backbone["max_sequence_length"]
    strategy_lib.check_batch_size(
        config.batch_size,
        strategy.num_replicas_in_sync,
        config.accumulation_steps,
    )
    total = inputs.total_steps(config, tokenizer, sequence_length)
    warmup = validation.resolve_warmup(config.warmup_steps, total)
    config = dataclasses.replace(config, warmup_steps=warmup)
    return _Run(
        config,
        strategy,
        chief,
        out,
        saved,
        tokenizer,
        backbone,
        sequence_length,
        total,
    )


def _backbone_kwargs(config, tokenizer) -> dict:
    overrides = {"vocabulary_size": tokenizer.vocabulary_size}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    return presets.get_preset(config.preset, **overrides)


def _check_resume(out, saved, config, backbone) -> None:
    config_path = os.path.join(out, modeldir.CONFIG_FILE)
    saved_config = modeldir.validate(out)
    wanted = {k: v for k, v in backbone.items() if v is not None}
    state_lib.check_compatible(config_path, saved_config["backbone"], wanted)
    current = config.to_dict()
    current.pop("out")
    state_lib.report_changes(saved.config, current)


def _build(run: _Run):
    """Model, trainer and optimizer (restored when resuming); in scope."""
    config = run.config
    backbone = backbone_lib.Backbone(**run.backbone, dtype=config.precision)
    lm = causal_lm.CausalLM(backbone)
    lm.tokenizer = run.tokenizer
    trainer = trainer_lib.LMTrainer(lm, config.accumulation_steps)
    optimizer = optimizer_lib.from_config(
        config, run.total_steps, sum_gradients=False
    )
    trainer.compile(optimizer=optimizer, jit_compile=_jit(run))
    optimizer.build(lm.trainable_variables)
    if run.saved:
        lm.load_weights(os.path.join(run.out, modeldir.WEIGHTS_FILE))
        state_lib.restore_optimizer(optimizer, run.out)
        state_lib.restore_rng(lm, run.out)
    return lm, trainer


def _jit(run: _Run) -> bool:
    if run.config.jit_compile == "auto":
        return strategy_lib.is_default(run.strategy)
    return run.config.jit_compile == "on"


def _save(run: _Run, lm, optimizer, step: int) -> None:
    state = state_lib.TrainState(
        step=step, total_steps=run.total_steps, config=run.config.to_dict()
    )
    extra = state_lib.extra_files(state, optimizer, lm)
    # A run's own directory: `_prepare` checked it is new or this run's.
    modeldir.save(lm, run.tokenizer, run.out, extra=extra, overwrite=True)
    logger.debug("Checkpoint at step %d written to %s.", step, run.out)


def _fit(run: _Run, lm, trainer, data, verbose, extra_callbacks) -> TrainResult:
    config, start = run.config, run.start_step
    length = callbacks_lib.epoch_length(
        config.checkpoint_every, config.validate_every, start, run.total_steps
    )
    train_data, val_data, val_steps = data
    progress = _progress_logger(run, length)
    checkpointer = _checkpointer(run, lm, trainer, length)
    validate = val_data is not None and config.validate_every > 0
    try:
        trainer.fit(
            train_data,
            epochs=math.ceil(run.total_steps / length),
            initial_epoch=start // length,
            steps_per_epoch=length,
            validation_data=val_data if validate else None,
            validation_steps=val_steps or None,
            validation_freq=max(config.validate_every // length, 1),
            callbacks=[
                # First, so that nothing after it sees a non-finite step.
                callbacks_lib.NonFiniteLossGuard(length),
                progress,
                checkpointer,
                callbacks_lib.StopAtStep(run.total_steps, length),
                *extra_callbacks,
            ],
            verbose=verbose,
            shuffle=False,  # The dataset is shuffled, seeded.
        )
    except divergence.TrainingDiverged as err:
        progress.on_train_end()  # Flushes TensorBoard.
        kept = checkpointer.saved_step
        raise errors.InputError(
            divergence.message(err, run.out, kept, config)
        ) from None
    step = checkpointer.last_step
    if val_data is not None and progress.validated_step != step:
        logs = trainer.evaluate(
            val_data, steps=val_steps, verbose=0, return_dict=True
        )
        progress.log_validation(step, float(logs["loss"]))
    return TrainResult(lm, step, start, progress.validation_loss, run.out)


def _checkpointer(run: _Run, lm, trainer, length) -> callbacks_lib.Checkpointer:
    def save(step):
        # Every worker checks (they hold the same values), so all stop.
        divergence.check_finite(step, lm, trainer.optimizer)
        if run.chief:
            _save(run, lm, trainer.optimizer, step)

    return callbacks_lib.Checkpointer(
        save,
        every=run.config.checkpoint_every,
        steps_per_epoch=length,
        initial_step=run.start_step,
    )


def _progress_logger(run: _Run, length: int) -> callbacks_lib.ProgressLogger:
    config = run.config
    log_dir = os.path.join(run.out, state_lib.LOG_DIR)
    if run.chief and run.saved:
        state_lib.truncate_log(run.out, run.start_step)
    return callbacks_lib.ProgressLogger(
        tokens_per_step=config.batch_size * run.sequence_length,
        steps_per_epoch=length,
        log_path=os.path.join(run.out, state_lib.METRICS_FILE)
        if run.chief
        else None,
        tensorboard_dir=log_dir if run.chief else None,
        log_every=config.log_every,
    )
