"""`train`: text files in, a trained model directory out; resumes by itself.

A run is a `TrainConfig`. The model directory `config.out` is written at
step 0, at every checkpoint and at the end (atomically, see
`tflm.models.model_dir`), with the state that resuming needs. Running the
same config again continues from the last checkpoint with the same data
order and learning-rate schedule, and does nothing when the run has
finished.
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
from tflm import data as data_lib
from tflm import errors
from tflm import tokenizers
from tflm.data import prepared as prepared_lib
from tflm.models import backbone as backbone_lib
from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.models import presets
from tflm.models import train_step
from tflm.tokenizers import templates
from tflm.train import best as best_lib
from tflm.train import callbacks as callbacks_lib
from tflm.train import config as config_lib
from tflm.train import divergence
from tflm.train import inputs
from tflm.train import optimizer as optimizer_lib
from tflm.train import parent as parent_lib
from tflm.train import progress as progress_lib
from tflm.train import space
from tflm.train import start as start_lib
from tflm.train import state as state_lib
from tflm.train import strategy as strategy_lib
from tflm.train import task_inputs
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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `train`; the message says what the model directory
    kept and how to resume."""


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
    parent: parent_lib.Parent | None = None
    task: task_inputs.TaskData | None = None

    @property
    def template(self) -> dict:
        return task_template(self.parent)

    @property
    def keeps_best(self) -> bool:
        """Whether the result is the best validated weights, not the last:
        on task data and with early stopping."""
        return (
            self.config.data_format == "task"
            or self.config.early_stopping_patience is not None
        )

    def metadata(self, keeper) -> dict:
        """The `config.json` entries besides the model's own."""
        entries = {}
        if self.parent is not None:
            entries["parent"] = self.parent.record()
        if self.config.data_format == "task":
            entries["template"] = self.template
        parent = self.parent.config if self.parent is not None else {}
        for key in ("eos_ids", model_dir.HF_MODEL_TYPE):  # Carried over.
            if parent.get(key):
                entries[key] = parent[key]
        if keeper is not None and keeper.best_step is not None:
            entries["best_step"] = keeper.best_step
        if self.config.lora_rank is not None:
            entries["lora"] = {
                "rank": self.config.lora_rank,
                "alpha": self.config.lora_alpha,
                "targets": list(self.config.lora_targets),
            }
        return entries

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
        verbose: `0` hides the progress line that `train` writes to
            standard output (see `tflm.train.progress`).
        callbacks: more Keras callbacks for `fit`.

    Returns:
        A `TrainResult`.

    Raises:
        InputError: bad settings or data, an output folder that is not a
            model directory, one from an incompatible run, or a run that
            diverged (a NaN loss; the last good checkpoint is kept).
        TrainingInterrupted: Ctrl-C while training.
    """
    out = atomic.resolve(config.out)
    if config.init_from is not None:
        _check_apart(out, config.init_from)
    strategy = strategy_lib.resolve_strategy(config.strategy)
    chief = strategy_lib.is_chief(strategy)
    with contextlib.ExitStack() as stack:
        # One run at a time writes a model directory (`tflm.atomic.lock`),
        # and reads it only while holding the lock: a run started before
        # another finished cannot then replace what that one wrote.
        if chief:
            stack.enter_context(atomic.lock(out))
        run = _prepare(config, stack, strategy, out)
        try:
            return _train(run, config, verbose, callbacks)
        except OSError as err:
            if not atomic.is_no_space(err):
                raise
            raise space.full_disk(run.out, None, None) from None


def _check_apart(out: str, parent: str) -> None:
    """Refuses an `out` that is, holds or lies inside the parent model."""
    parent = os.path.realpath(parent)
    if out == parent or _inside(out, parent):
        raise errors.InputError(
            f"--out {out} is inside the parent model {parent}: the run's "
            "checkpoints would change the parent's files, so the parent "
            "would no longer be the model it was and a stopped run could "
            "never resume (its parent's fingerprint would differ). Name an "
            "--out outside the parent."
        )
    if _inside(parent, out):
        raise errors.InputError(
            f"The parent model {parent} is inside --out {out}: every "
            "checkpoint moves the folder's other entries, the parent "
            "included, into the new copy of --out. Move the parent out, or "
            "name another --out."
        )


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def _train(run: _Run, config, verbose, callbacks) -> TrainResult:
    strategy_lib.check_workers_agree(
        run.strategy, start_step=run.start_step, total_steps=run.total_steps
    )
    # Done when this run's total is reached (a resumed run may be given more
    # --steps than it was first) or it stopped early.
    if run.saved and (
        run.start_step >= run.total_steps or run.saved.progress.get("stopped")
    ):
        logger.debug(
            "%s is trained to step %d of %d; nothing to do.",
            run.out,
            run.start_step,
            run.total_steps,
        )
        model = model_dir.load_model(causal_lm.CausalLM, run.out)
        return TrainResult(model, run.start_step, run.start_step, None, run.out)
    if run.saved:
        current = run.config.to_dict()
        current.pop("out")
        state_lib.report_changes(run.saved.config, current)
        logger.info("Resuming %s from step %d.", run.out, run.start_step)
    # Datasets first: bad data fails before anything is written.
    data = _datasets(run)
    with run.strategy.scope():
        lm, trainer = _build(run)
    if run.chief and not run.saved:
        _save(run, lm, trainer.optimizer, 0)
    return _fit(run, lm, trainer, data, verbose, list(callbacks))


def _datasets(run: _Run) -> _Data:
    config = run.config
    if run.task is not None:
        return _Data(
            task_inputs.train_dataset(config, run.task, run.start_step),
            *task_inputs.validation_dataset(config, run.task),
        )
    length = run.sequence_length
    if train_step.spans_workers(run.strategy) and (
        data_lib.prepared_directory(config.data) is not None
    ):
        # Each worker reads its own shards (tflm.data.prepared).
        train = run.strategy.distribute_datasets_from_function(
            lambda context: inputs.train_dataset(
                config, run.tokenizer, length, run.start_step, context
            )
        )
    else:
        train = inputs.train_dataset(
            config, run.tokenizer, length, run.start_step
        )
    return _Data(
        train, *inputs.validation_dataset(config, run.tokenizer, length)
    )


def task_template(parent: parent_lib.Parent | None) -> dict:
    """The chat template task data is rendered in: the parent's (an
    imported chat model's own), else tflm's."""
    if parent is not None and parent.config.get("template"):
        return parent.config["template"]
    return templates.TEMPLATE


def _prepare(config: config_lib.TrainConfig, stack, strategy, out) -> _Run:
    chief = strategy_lib.is_chief(strategy)
    if chief:
        model_dir.recover(out)
    model_dir.check_target(out)
    inputs.check_data(config)
    saved = state_lib.read(out) if model_dir.is_model_dir(out) else None
    config = config_lib.resolve_learning_rate(
        config, saved.config if saved else None
    )
    keras.utils.set_random_seed(config.seed)
    parent = None
    if config.init_from is not None:
        parent = stack.enter_context(parent_lib.resolve(config.init_from))
        backbone = start_lib.parent_backbone(parent, config)
        tokenizer = start_lib.parent_tokenizer(parent)
    else:
        tokenizer = inputs.make_tokenizer(
            config, out if saved else None, train_step.spans_workers(strategy)
        )
        backbone = _backbone_kwargs(config, tokenizer)
    if saved:
        _check_resume(out, backbone, parent)
    # `TrainConfig` checked that it fits the preset's context.
    sequence_length = config.sequence_length or backbone["max_sequence_length"]
    strategy_lib.check_batch_size(
        config.batch_size,
        strategy.num_replicas_in_sync,
        config.accumulation_steps,
    )
    task = None
    if config.data_format == "task":
        task = task_inputs.load(
            config, tokenizer, sequence_length, task_template(parent)
        )
        # Without --sequence-length, windows fit the longest example.
        sequence_length = task.train[0].shape[1] - 1
        total = task_inputs.total_steps(config, task)
    else:
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
        parent,
        task,
    )


def _backbone_kwargs(config, tokenizer) -> dict:
    overrides = {"vocabulary_size": tokenizer.vocabulary_size}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    return presets.get_preset(config.preset, **overrides)


def _check_resume(out, backbone, parent) -> None:
    config_path = os.path.join(out, model_dir.CONFIG_FILE)
    saved_config = model_dir.validate(out)
    recorded = saved_config.get("parent", {}).get("sha256")
    if parent is not None and recorded != parent.fingerprint:
        raise errors.InputError(
            f"{parent.path} is not the model {out} was started from (its "
            "weights, tokenizer or config changed, another parent was "
            "named, or an older tflm started the run and recorded another "
            "kind of fingerprint). Resume from the same parent, or name a "
            "new --out to train again."
        )
    wanted = {k: v for k, v in backbone.items() if v is not None}
    state_lib.check_compatible(config_path, saved_config["backbone"], wanted)


def _build(run: _Run):
    """Model, trainer and optimizer (restored when resuming); in scope."""
    config = run.config
    if run.parent is not None:
        lm = start_lib.build_from_parent(run.parent, config)
    else:
        backbone = backbone_lib.Backbone(**run.backbone, dtype=config.precision)
        lm = causal_lm.CausalLM(backbone)
    lm.tokenizer = run.tokenizer
    lora = config.lora_rank is not None
    if run.saved and not lora:
        lm.load_weights(os.path.join(run.out, model_dir.WEIGHTS_FILE))
    start_lib.enable_lora(lm, config)
    if run.saved and lora:
        start_lib.restore_adapters(lm, run.out)
    trainer = trainer_lib.LMTrainer(lm, config.accumulation_steps)
    optimizer = optimizer_lib.from_config(
        config, run.total_steps, sum_gradients=False
    )
    jit = use_xla(config.jit_compile, run.strategy, config.precision)
    trainer.compile(optimizer=optimizer, jit_compile=jit)
    optimizer.build(lm.trainable_variables)
    if run.saved:
        state_lib.restore_optimizer(optimizer, run.out)
        state_lib.restore_rng(lm, run.out)
    return lm, trainer


def use_xla(jit_compile: str, strategy, precision: str) -> bool:
    """Whether a run compiles its train step with XLA.

    `"on"` and `"off"` say so; `"auto"` is on under the default strategy,
    except for `mixed_bfloat16` on a machine without a GPU: XLA's CPU
    backend gives no bf16 matmul speed-up, where oneDNN's bf16 matmuls in
    the plain graph do (see docs/performance.md).
    """
    if jit_compile != "auto":
        return jit_compile == "on"
    if not strategy_lib.is_default(strategy):
        return False
    cpu_only = not tf.config.list_physical_devices("GPU")
    return not (precision == "mixed_bfloat16" and cpu_only)


def _save(run: _Run, lm, optimizer, step: int, keeper=None) -> None:
    state = state_lib.TrainState(
        step=step,
        total_steps=run.total_steps,
        config=run.config.to_dict(),
        progress=keeper.state() if keeper is not None else {},
    )
    extra = state_lib.extra_files(state, optimizer, lm)
    if keeper is not None and keeper.weights is not None:
        extra[best_lib.BEST_FILE] = keeper.write
    if run.config.lora_rank is not None:
        extra[start_lib.TRAIN_ADAPTERS_FILE] = lambda path: (
            start_lib.save_adapters(lm, path)
        )
    # LoRA on a model directory: the base stays there, by reference.
    base_from_parent = (
        run.config.lora_rank is not None
        and run.parent is not None
        and run.parent.kind == parent_lib.MODEL_DIR
    )
    needed = space.checkpoint_bytes(
        lm,
        optimizer,
        weights=not base_from_parent,
        best=keeper is not None and keeper.weights is not None,
        lora=run.config.lora_rank is not None,
        tokenizer_dir=_tokenizer_dir(run),
    )
    try:
        atomic.check_space(os.path.dirname(run.out), needed)
        # A run's own directory: `_prepare` checked it is new or this run's.
        model_dir.save(
            lm,
            run.tokenizer,
            run.out,
            extra=extra,
            metadata=run.metadata(keeper),
            overwrite=True,
            base_from_parent=base_from_parent,
        )
    except atomic.NoSpaceError:
        raise space.full_disk(run.out, step, needed) from None
    logger.debug("Checkpoint at step %d written to %s.", step, run.out)


def _tokenizer_dir(run: _Run) -> str | None:
    """A written copy of the run's tokenizer (for its size)."""
    for directory in (run.out, run.parent.directory if run.parent else None):
        if directory and model_dir.is_model_dir(directory):
            return os.path.join(directory, model_dir.TOKENIZER_DIR)
    return None


def _fit(run: _Run, lm, trainer, data, verbose, extra_callbacks) -> TrainResult:
    config, start = run.config, run.start_step
    length = callbacks_lib.epoch_length(
        config.checkpoint_every, config.validate_every, start, run.total_steps
    )
    train_data, val_data, val_steps = data
    progress = _progress_logger(run, length, verbose)
    keeper = _keeper(run, lm)
    checkpointer = _checkpointer(run, lm, trainer, length, keeper)
    validate = val_data is not None and config.validate_every > 0
    try:
        with prepared_lib.damaged_shards_refused():
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
                    *([keeper] if keeper is not None else []),
                    checkpointer,
                    callbacks_lib.StopAtStep(run.total_steps, length),
                    *extra_callbacks,
                ],
                verbose=0,  # `progress` shows tflm's own line.
                shuffle=False,  # The dataset is shuffled, seeded.
            )
    except KeyboardInterrupt:
        progress.on_train_end()  # Ends the progress line.
        raise _interrupted(run, checkpointer) from None
    except divergence.TrainingDiverged as err:
        progress.on_train_end()  # Flushes TensorBoard.
        kept = checkpointer.saved_step
        raise errors.InputError(
            divergence.message(err, run.out, kept, config)
        ) from None
    except errors.InputError:  # A full disk, damaged shards.
        progress.on_train_end()  # Ends the progress line.
        raise
    step = checkpointer.last_step
    if val_data is not None and progress.validated_step != step:
        with prepared_lib.damaged_shards_refused():
            logs = trainer.evaluate(
                val_data, steps=val_steps, verbose=0, return_dict=True
            )
        progress.log_validation(step, float(logs["loss"]))
        if keeper is not None:
            keeper.observe(step, float(logs["loss"]))
    if keeper is not None:
        _finish(run, lm, trainer, keeper, step)
    return TrainResult(lm, step, start, progress.validation_loss, run.out)


def _keeper(run: _Run, lm) -> best_lib.BestKeeper | None:
    if not run.keeps_best:
        return None
    # `_checkpointer` points `current_step` at its own count.
    keeper = best_lib.BestKeeper(
        lm, lambda: run.start_step, run.config.early_stopping_patience
    )
    if run.saved:
        keeper.restore(run.out, run.saved.progress)
    return keeper


def _finish(run: _Run, lm, trainer, keeper, step: int) -> None:
    """The final checkpoint: the best weights seen, and where they are."""
    divergence.check_finite(step, lm, trainer.optimizer)
    keeper.stopped = keeper.stopped or step < run.total_steps
    keeper.use_best()
    if run.chief:
        _save(run, lm, trainer.optimizer, step, keeper)
    if keeper.best_step is not None:
        logger.info(
            "Kept the weights of step %d (validation loss %.4f).",
            keeper.best_step,
            keeper.best_loss,
        )


def _checkpointer(
    run: _Run, lm, trainer, length, keeper
) -> callbacks_lib.Checkpointer:
    def save(step):
        # Every worker checks (they hold the same values), so all stop.
        divergence.check_finite(step, lm, trainer.optimizer)
        if run.chief:
            _save(run, lm, trainer.optimizer, step, keeper)

    checkpointer = callbacks_lib.Checkpointer(
        save,
        every=run.config.checkpoint_every,
        steps_per_epoch=length,
        initial_step=run.start_step,
        at_end=keeper is None,  # `_finish` writes the last one.
    )
    if keeper is not None:
        keeper.current_step = lambda: checkpointer.last_step
    return checkpointer


def _interrupted(run: _Run, checkpointer) -> TrainingInterrupted:
    kept = checkpointer.saved_step
    return TrainingInterrupted(
        f"interrupted at step {checkpointer.last_step} of {run.total_steps}. "
        f"{run.out} keeps step {kept}, its last checkpoint: run the same "
        f"command again to resume from step {kept}."
    )


def _progress_logger(
    run: _Run, length: int, verbose
) -> callbacks_lib.ProgressLogger:
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
        bar=progress_lib.ProgressBar(
            total_steps=run.total_steps,
            chunk_steps=length,
            tokens_per_step=config.batch_size * run.sequence_length,
            every=config.log_every,
        )
        if verbose and run.chief
        else None,
    )
