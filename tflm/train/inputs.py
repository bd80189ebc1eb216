"""The tokenizer and datasets a training run uses."""

from __future__ import annotations

import hashlib
import logging
import math
import os

import tensorflow as tf

from tflm import data
from tflm import errors
from tflm import tokenizers
from tflm.models import model_dir
from tflm.train import config as config_lib

logger = logging.getLogger(__name__)

_SENTENCEPIECE = "sentencepiece:"
# Plain corpora above this size are refused: `tflm data prepare` first.
PREPARE_ABOVE_BYTES = 256 << 20
# Tokens a validation of prepared data scores unless --eval-batches says.
VALIDATION_TOKENS = 1 << 20


def prepared_data(config: config_lib.TrainConfig):
    """The checked prepared folder `config.data` names, or None."""
    directory = data.prepared_directory(config.data)
    if directory is None:
        return None
    from tflm.data import prepared

    return prepared.load(directory)


def check_data(config: config_lib.TrainConfig) -> None:
    """Refuses what the data cannot do, before anything is written: a
    plain corpus too large for the in-memory pipeline, and prepared data
    with options it settled when it was prepared.

    Raises:
        InputError: with the command to run instead.
    """
    directory = data.prepared_directory(config.data)
    if directory is not None:
        if config.data_format == "task":
            raise errors.InputError(
                f"{directory} is prepared text, not task examples: pass the "
                ".jsonl task files as --data."
            )
        if config.data_service:
            from tflm.data import service

            service.check_reachable(config.data_service)
        spec = config.tokenizer or ""
        if spec.startswith(_SENTENCEPIECE):
            raise errors.InputError(
                f"{directory} was tokenized when it was prepared: drop "
                f"--tokenizer {spec} (its own tokenizer is used)."
            )
        settled = [
            flag
            for flag, value, default in (
                ("--text-format", config.text_format, "document"),
                ("--jsonl-field", config.jsonl_field, "text"),
            )
            if value != default
        ]
        if settled:
            raise errors.InputError(
                f"{directory} was split into documents when it was "
                f"prepared: drop {' and '.join(settled)}, or prepare the "
                "text again with them (tflm data prepare)."
            )
        return
    if config.data_service:
        raise errors.InputError(
            "--data-service reads prepared data: run `tflm data prepare "
            "--data ... --out DATA_DIR` and train with --data DATA_DIR."
        )
    if config.data_format == "task":
        return
    files = data.find_files(config.data, exclude=[config.out])
    size = sum(os.path.getsize(f) for f in files)
    if size > PREPARE_ABOVE_BYTES:
        paths = " ".join(config.data)
        raise errors.InputError(
            f"--data holds {size / 2**20:,.0f} MB of text, more than the "
            f"{PREPARE_ABOVE_BYTES >> 20} MB tflm tokenizes in memory (that "
            "takes about 7 times the corpus). Tokenize it once into shards, "
            f"then train from them: `tflm data prepare --data {paths} "
            "--tokenizer TOKENIZER --out DATA_DIR`, then `tflm train --data "
            "DATA_DIR ...` (memory then stays flat)."
        )


def make_tokenizer(
    config: config_lib.TrainConfig,
    saved_in: str | None = None,
    multi_worker: bool = False,
) -> tokenizers.Tokenizer:
    """The tokenizer `config.tokenizer` names, trained now if asked.

    Args:
        config: `tokenizer` is `"byte"`, a tokenizer directory, or
            `"sentencepiece:N"` (train an N-id model on `data`).
        saved_in: a model directory being resumed: its tokenizer is used,
            after checking that it is the one `config` names.
        multi_worker: several workers would each train their own
            SentencePiece model, so that is refused.

    Raises:
        ValueError: a bad name, or one that does not match `saved_in`.
    """
    if saved_in:
        return _saved_tokenizer(config, saved_in)
    spec = config.tokenizer
    if spec is None:
        found = prepared_data(config)
        if found is not None:
            return found.tokenizer()
        spec = "byte"
    if spec == "byte":
        return tokenizers.ByteTokenizer()
    if spec.startswith(_SENTENCEPIECE):
        size = spec[len(_SENTENCEPIECE) :]
        if not size.isdigit():
            raise errors.InputError(
                "tokenizer 'sentencepiece:N' needs an integer N. Received: "
                f"tokenizer={spec!r}."
            )
        if multi_worker:
            raise errors.InputError(
                "Several workers cannot train a tokenizer on the fly: train "
                "it once with `tflm tokenizer train` and pass its directory."
            )
        return _train_sentencepiece(config, int(size))
    if os.path.isdir(spec):
        return tokenizers.load_tokenizer(spec)
    raise errors.InputError(
        "tokenizer must be 'byte', 'sentencepiece:N' or a tokenizer "
        f"directory. Received: tokenizer={spec!r} (no such directory)."
    )


def _train_sentencepiece(
    config: config_lib.TrainConfig, size: int
) -> tokenizers.Tokenizer:
    files = data.find_files(config.data, exclude=[config.out])
    text_files = [f for f in files if not f.endswith(".jsonl")]
    jsonl_files = [f for f in files if f.endswith(".jsonl")]
    records = None
    if jsonl_files:
        # Checks every line now: an error names its file and line here,
        # not from inside SentencePiece's trainer.
        records = data.iter_documents(
            jsonl_files, config.text_format, config.jsonl_field
        )
    logger.info("Training a SentencePiece tokenizer of %d ids.", size)
    return tokenizers.SentencePieceTokenizer.train(
        text_files, texts=records, vocabulary_size=size
    )


def _saved_tokenizer(config, directory: str) -> tokenizers.Tokenizer:
    saved = tokenizers.load_tokenizer(
        os.path.join(directory, model_dir.TOKENIZER_DIR)
    )
    spec = config.tokenizer or ""
    if spec.startswith(_SENTENCEPIECE):
        wanted = f"sentencepiece with {spec[len(_SENTENCEPIECE) :]} ids"
        same = saved.type_name == "sentencepiece" and spec == (
            f"{_SENTENCEPIECE}{saved.vocabulary_size}"
        )
    else:
        requested = make_tokenizer(config)
        wanted = f"{requested.type_name} from {spec or 'the data'!r}"
        same = _signature(requested) == _signature(saved)
    if not same:
        raise errors.InputError(
            f"{directory} was trained with another tokenizer (saved: "
            f"{saved.type_name} with {saved.vocabulary_size} ids; asked: "
            f"{wanted}). Resume with the same --tokenizer, or name a new "
            "--out."
        )
    return saved


def _signature(tokenizer: tokenizers.Tokenizer):
    return (
        tokenizer.type_name,
        tokenizer.get_config(),
        getattr(tokenizer, "model_proto", None),
    )


def _common(config: config_lib.TrainConfig, tokenizer, sequence_length):
    return dict(
        tokenizer=tokenizer,
        sequence_length=sequence_length,
        text_format=config.text_format,
        jsonl_field=config.jsonl_field,
        # The model directory is never read as text, even inside --data.
        exclude=[config.out],
    )


def _train_split(config: config_lib.TrainConfig) -> dict:
    if config.validation_data or config.validation_fraction == 0:
        return dict(split="all")
    return dict(split="train", validation_fraction=config.validation_fraction)


def train_dataset(
    config: config_lib.TrainConfig,
    tokenizer: tokenizers.Tokenizer,
    sequence_length: int,
    skip: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Global batches in a fixed, seeded order, repeated, `skip` dropped.

    The order depends only on the data, `seed` and the global seed, so a
    resumed run that skips the batches it already used sees the same
    batches as an uninterrupted one. From prepared data the skipped
    batches are not read, and with `input_context` each input pipeline
    reads its own shards (its batches are per replica, and it skips its
    own share).
    """
    skip_batches = skip
    if input_context is not None:
        local = input_context.num_replicas_in_sync // max(
            input_context.num_input_pipelines, 1
        )
        skip_batches = skip * local
    service = {}
    if config.data_service:
        service = dict(data_service=config.data_service)
        if input_context is not None:
            # The workers of this run (and of this resumption) share one
            # job; a lone trainer's job is its own.
            digest = hashlib.sha256(os.path.realpath(config.out).encode())
            service["job_name"] = f"tflm-{digest.hexdigest()[:16]}-{skip}"
    return data.make_dataset(
        config.data,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        repeat=True,
        drop_remainder=True,
        skip_batches=skip_batches,
        input_context=input_context,
        **service,
        **_train_split(config),
        **_common(config, tokenizer, sequence_length),
    )


def batches_per_epoch(
    config: config_lib.TrainConfig,
    tokenizer: tokenizers.Tokenizer,
    sequence_length: int,
) -> int:
    """Full global batches in one pass over the training split."""
    found = prepared_data(config)
    if found is not None:
        from tflm.data import prepared

        split = _train_split(config)["split"]
        windows = prepared.count_windows(found, split, sequence_length)
        return windows // config.batch_size
    dataset = data.make_dataset(
        config.data,
        batch_size=config.batch_size,
        shuffle=False,
        **_train_split(config),
        **_common(config, tokenizer, sequence_length),
    )
    return int(dataset.reduce(0, lambda n, _: n + 1))


def total_steps(
    config: config_lib.TrainConfig,
    tokenizer: tokenizers.Tokenizer,
    sequence_length: int,
) -> int:
    """`config.steps`, or the steps `config.epochs` (default 1) take."""
    if config.steps is not None:
        return config.steps
    epochs = 1.0 if config.epochs is None else config.epochs
    per_epoch = batches_per_epoch(config, tokenizer, sequence_length)
    return max(1, math.ceil(epochs * per_epoch))


def validation_dataset(
    config: config_lib.TrainConfig,
    tokenizer: tokenizers.Tokenizer,
    sequence_length: int,
) -> tuple[tf.data.Dataset | None, int]:
    """The validation batches, repeated, and how many make one validation.

    Returns:
        `(dataset, steps)`; `(None, 0)` when the run has no validation.
    """
    if config.validation_data:
        paths, split = config.validation_data, dict(split="all")
    elif config.validation_fraction > 0:
        paths = config.data
        split = dict(
            split="validation", validation_fraction=config.validation_fraction
        )
    else:
        return None, 0
    kwargs = dict(
        batch_size=config.batch_size,
        shuffle=False,
        drop_remainder=False,
        **split,
        **_common(config, tokenizer, sequence_length),
    )
    found = None if config.validation_data else prepared_data(config)
    if found is not None:
        from tflm.data import prepared

        windows = prepared.count_windows(found, "validation", sequence_length)
        if not windows:
            why = (
                "it was prepared with --validation-fraction 0"
                if not found.settings["validation_fraction"]
                else "its held-out shards hold no window of the sequence "
                "length (prepare with a smaller --shard-tokens to hold out "
                "more)"
            )
            logger.info(
                "%s: training without validation: %s.", found.directory, why
            )
            return None, 0
        steps = config.eval_batches or -(-windows // config.batch_size)
        window = (sequence_length + 1) * config.batch_size
        if not config.eval_batches and steps * window > VALIDATION_TOKENS:
            steps = max(1, VALIDATION_TOKENS // window)
            logger.info(
                "Validating on %d batches (%s tokens) drawn from all of %s's "
                "held-out shards; --eval-batches sets how many.",
                steps,
                f"{steps * window:,}",
                found.directory,
            )
        # Drawn over all held-out shards (a fixed seed), and the same
        # batches at every validation.
        kwargs.update(shuffle=True, seed=0)
        once = data.make_dataset(paths, **kwargs)
        return once.take(steps).repeat(), steps
    once = data.make_dataset(paths, **kwargs)
    steps = config.eval_batches or int(once.reduce(0, lambda n, _: n + 1))
    # Repeated after batching: every pass has the same batches.
    return once.repeat(), steps
