"""`evaluate`: loss, perplexity and bits per character of a model directory."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence

import tensorflow as tf

from tflm import data
from tflm import tokenizers
from tflm.data import prepared as prepared_lib
from tflm.models import causal_lm
from tflm.train import strategy as strategy_lib
from tflm.train import trainer as trainer_lib
from tflm.train import validation

logger = logging.getLogger(__name__)


def count_tokens_and_characters(
    paths: str | os.PathLike | Sequence[str],
    tokenizer: tokenizers.Tokenizer,
    *,
    split: str = "all",
    validation_fraction: float = 0.1,
    text_format: str = "document",
    jsonl_field: str = "text",
    exclude: Sequence[str | os.PathLike] = (),
) -> tuple[int, int]:
    """Tokens (with one end-of-text per document) and characters of a split.

    The split is the one `make_dataset` makes (`tflm.data.split`).

    Returns:
        `(tokens, characters)`, characters counted as Unicode code points.
    """
    docs = data.split_documents(
        data.find_files(paths, exclude),
        split,
        validation_fraction,
        text_format=text_format,
        jsonl_field=jsonl_field,
    )
    characters = docs.reduce(
        tf.constant(0, tf.int64),
        lambda n, d: (
            n
            + tf.reduce_sum(
                tf.cast(tf.strings.length(d, unit="UTF8_CHAR"), tf.int64)
            )
        ),
    )
    tokens = data.token_stream(docs, tokenizer).reduce(
        tf.constant(0, tf.int64), lambda n, ids: n + tf.size(ids, tf.int64)
    )
    return int(tokens), int(characters)


def evaluate(
    directory: str | os.PathLike,
    paths: str | os.PathLike | Sequence[str],
    *,
    batch_size: int = 8,
    sequence_length: int | None = None,
    split: str = "all",
    validation_fraction: float = 0.1,
    text_format: str = "document",
    jsonl_field: str = "text",
    precision: str | None = None,
    strategy: str = "auto",
) -> dict[str, float]:
    """Evaluates a model directory on text.

    Every window of `sequence_length + 1` tokens in the split is scored
    once (the tail shorter than a window is left out).

    Args:
        directory: a model directory.
        paths: text files, folders or globs.
        batch_size: sequences per batch.
        sequence_length: tokens per sequence; defaults to the context.
        split: `"all"`, `"train"` or `"validation"` text of `paths`, the
            same text `tflm train` used or held out with the same
            `validation_fraction` (see `tflm.data.split`).
        validation_fraction: the share that defines the splits.
        text_format: what a document is in `.txt` files.
        jsonl_field: the text field of `.jsonl` records.
        precision: dtype policy to run in; defaults to the saved one.
        strategy: a name for `resolve_strategy`.

    Returns:
        `loss` (nats per token), `perplexity`, `bits_per_character`,
        `tokens` (scored) and `characters` (of the split). The three
        metrics are `None` where not finite (broken weights), so that the
        result is always valid JSON.

    Raises:
        InputError: a `batch_size` or `sequence_length` below 1, or a
            `sequence_length` beyond the model's context.
    """
    validation.check_integer("batch_size", batch_size, 1)
    if sequence_length is not None:
        validation.check_integer("sequence_length", sequence_length, 1)
    trainer = _trainer(directory, precision, strategy)
    tokenizer = trainer.lm.tokenizer
    context = trainer.lm.backbone.max_sequence_length
    if (sequence_length or context) > context:
        raise validation.fail(
            "sequence_length",
            sequence_length,
            f"<= the model's context ({context} tokens)",
        )
    common = dict(
        split=split,
        validation_fraction=validation_fraction,
        text_format=text_format,
        jsonl_field=jsonl_field,
        # The model directory is never read as text, even inside `paths`.
        exclude=[directory],
    )
    dataset = data.make_dataset(
        paths,
        tokenizer,
        sequence_length=sequence_length or context,
        batch_size=batch_size,
        shuffle=False,
        drop_remainder=False,
        **common,
    )
    with warnings.catch_warnings():
        # Keras warns when a dataset of unknown length ends; this one does.
        warnings.filterwarnings("ignore", "Your input ran out of data")
        with prepared_lib.damaged_shards_refused():
            logs = trainer.evaluate(dataset, verbose=0, return_dict=True)
        loss = float(logs["loss"])
    if data.prepared_directory(paths) is not None:
        # Shards hold ids, not text: no characters to count.
        tokens, characters = 0, 0
    else:
        tokens, characters = count_tokens_and_characters(
            paths, tokenizer, **common
        )
    if not math.isfinite(loss):
        logger.warning(
            "The loss of %s is %s: its weights are broken (a diverged run?); "
            "the metrics are reported as null.",
            directory,
            loss,
        )
    return {
        "loss": _finite(loss),
        "perplexity": _finite(math.exp(min(loss, 50.0))),
        "bits_per_character": _finite(loss * tokens / characters / math.log(2))
        if characters
        else None,
        "tokens": int(trainer.weight_total.result()),
        "characters": characters,
    }


def _finite(value: float) -> float | None:
    """`value`, or `None` (JSON `null`) for NaN and infinity."""
    return value if math.isfinite(value) else None


def _trainer(directory, precision, strategy) -> trainer_lib.LMTrainer:
    """The saved model in an `LMTrainer`, built in the strategy's scope."""
    distribution = strategy_lib.resolve_strategy(strategy)
    with distribution.scope():
        model = causal_lm.CausalLM.from_preset(directory, dtype=precision)
        trainer = trainer_lib.LMTrainer(model)
        trainer.compile(jit_compile=strategy_lib.is_default(distribution))
    return trainer
