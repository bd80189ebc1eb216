"""From text files to `(x, y, sample_weight)` training batches, in-graph.

read documents -> keep this split's documents or parts (see
`tflm.data.split`) ->
tokenize (vectorised, in parallel) with an end-of-text id after each
document -> pack the token stream into windows of `sequence_length + 1`
(stride `sequence_length + 1`: no token is repeated; the tail shorter than a
window is dropped) -> shard by `tf.distribute.InputContext` -> shuffle
(seeded) -> batch -> split into inputs and labels shifted by one ->
prefetch. No `py_function`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import tensorflow as tf

from tflm import errors
from tflm.data import files as files_lib
from tflm.data import prepared as prepared_lib
from tflm.data import split as split_lib
from tflm.data import tokens
from tflm.tokenizers import base

logger = logging.getLogger(__name__)

_LINES_PER_CALL = 256
_DOCS_PER_CALL = 64
# Corpora up to this size are tokenized once up front to check that they
# fill at least one batch; bigger ones are assumed to.
_EXACT_CHECK_BYTES = 16 << 20


def token_stream(
    doc_batches: tf.data.Dataset, tokenizer: base.Tokenizer
) -> tf.data.Dataset:
    """Tokenizes documents into int32 chunks, with `eos_id` after each one.

    Args:
        doc_batches: a dataset of string vectors of documents.
        tokenizer: the tokenizer.

    Returns:
        A dataset of int32 vectors that, concatenated in order, are exactly
        `tokenize(doc_1) + [eos] + tokenize(doc_2) + [eos] + ...`.
        Tokenizers whose tokens never span a newline tokenize line by line,
        which is much faster on long documents and gives the same ids.
    """
    if tokenizer.newline_is_boundary:
        pieces = doc_batches.map(
            lambda docs: tokens.split_lines(docs, tf.ones_like(docs, tf.bool))
        )
        pieces = pieces.rebatch(_LINES_PER_CALL)
    else:
        pieces = doc_batches.map(
            lambda docs: (docs, tf.ones_like(docs, tf.bool))
        )
        pieces = pieces.rebatch(_DOCS_PER_CALL)

    def tokenize(texts, ends):
        return tokens.tokenize_pieces(texts, ends, tokenizer)

    return pieces.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def pack_windows(chunks: tf.data.Dataset, window: int) -> tf.data.Dataset:
    """Cuts a stream of 1-D token chunks into consecutive windows.

    Args:
        chunks: a dataset of int32 vectors, read as one token stream.
        window: tokens per window.

    Returns:
        A dataset of int32 `[window]` vectors: the stream cut every `window`
        tokens. The tail shorter than a window is dropped.
    """

    def step(rest, chunk):
        tokens = tf.concat([rest, chunk], axis=0)
        count = tf.size(tokens) // window
        cut = count * window
        return tokens[cut:], tf.reshape(tokens[:cut], [count, window])

    empty = tf.zeros([0], tf.int32)
    return chunks.scan(empty, step).unbatch()


def make_dataset(
    paths: str | os.PathLike | Sequence[str],
    tokenizer: base.Tokenizer,
    *,
    sequence_length: int,
    batch_size: int,
    split: str = "train",
    validation_fraction: float = 0.1,
    split_mode: str = "auto",
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool | None = None,
    repeat: bool = False,
    text_format: str = "document",
    jsonl_field: str = "text",
    input_context: tf.distribute.InputContext | None = None,
    shuffle_buffer_size: int = 10_000,
    cache_dir: str | None = None,
    exclude: Sequence[str | os.PathLike] = (),
    skip_batches: int = 0,
    data_service: str | None = None,
    job_name: str | None = None,
) -> tf.data.Dataset:
    """Builds the dataset of batches that `CausalLM.fit` consumes.

    Args:
        paths: files, directories or glob patterns (`.txt`, `.jsonl`), or
            one folder of prepared token shards (`tflm data prepare`,
            `tflm.data.prepare`): its shards are read in a seeded order
            over the whole corpus (`tflm.data.prepared`), its held-out
            shards are the validation split, and `validation_fraction`,
            `split_mode`, `text_format`, `jsonl_field`,
            `shuffle_buffer_size`, `cache_dir` and `exclude` (settled when
            it was prepared) are not used.
        tokenizer: a `tflm.tokenizers.Tokenizer`.
        sequence_length: tokens per example, `T`.
        batch_size: global batch size; with `input_context`, each pipeline
            batches `input_context.get_per_replica_batch_size(batch_size)`.
        split: `"train"`, `"validation"` or `"all"` of the text.
        validation_fraction: share of the text held out for validation.
        split_mode: `"auto"` holds out whole documents when there are many
            and the tail of each document when there are few (see
            `tflm.data.split`); `"document"` or `"tail"` force one way.
        shuffle: shuffle windows, seeded by `seed`.
        seed: shuffle seed. The same seed gives the same batches as long as
            the global TensorFlow seed (`keras.utils.set_random_seed`) is the
            same or unset, because tf.data combines the two.
        drop_remainder: drop the last, smaller batch (for training).
            Defaults to `True`, except for `split="validation"`: that is
            scored, so every window counts, as in `tflm eval`.
        repeat: repeat forever (reshuffled each epoch).
        text_format: what a document is: `"document"` (a whole file or
            `.jsonl` record), `"paragraph"` (blank-line separated) or
            `"line"`.
        jsonl_field: the text field of `.jsonl` records.
        input_context: from `strategy.distribute_datasets_from_function`;
            windows are sharded over its input pipelines, so the pipelines
            together see each window once per epoch.
        shuffle_buffer_size: windows held by the shuffle buffer.
        cache_dir: where `.jsonl` texts are cached (never the data folder).
        exclude: folders never read, such as the model directory written.
        skip_batches: batches to drop from the start (a resumed run); from
            prepared shards they are not even read.
        data_service: `grpc://HOST:PORT` of a tf.data service dispatcher
            whose workers read prepared shards (`tflm.data.service`);
            trainers that pass the same `job_name` share one job.

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight)`: `x` is
        `{"token_ids": int32 [B, T], "padding_mask": bool [B, T]}` (all
        true), `y` int32 `[B, T]` is `token_ids` shifted left by one, and
        `sample_weight` is float32 ones `[B, T]`.

    Raises:
        InputError: bad arguments, no text, or too little for one batch.
    """
    _check_arguments(sequence_length, batch_size, split, validation_fraction)
    directory = prepared_lib.prepared_directory(paths)
    if directory is not None:
        return prepared_lib.make_dataset(
            directory,
            tokenizer,
            sequence_length=sequence_length,
            batch_size=batch_size,
            split=split,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=drop_remainder,
            repeat=repeat,
            input_context=input_context,
            skip_batches=skip_batches,
            data_service=data_service,
            job_name=job_name,
        )
    if data_service:
        raise errors.InputError(
            "the tf.data service reads prepared data: run `tflm data prepare "
            "--data ... --out DATA_DIR` and pass DATA_DIR as the data."
        )
    if drop_remainder is None:
        drop_remainder = split != "validation"
    files = files_lib.find_files(paths, exclude)
    docs = split_lib.split_documents(
        files,
        split,
        validation_fraction,
        split_mode=split_mode,
        text_format=text_format,
        jsonl_field=jsonl_field,
        cache_dir=cache_dir,
    )
    stream = token_stream(docs, tokenizer)
    windows = pack_windows(stream, sequence_length + 1)
    per_batch, pipelines = batch_size, 1
    if input_context is not None:
        per_batch = input_context.get_per_replica_batch_size(batch_size)
        pipelines = input_context.num_input_pipelines
        windows = windows.shard(pipelines, input_context.input_pipeline_id)
    needed = per_batch if drop_remainder else 1
    _check_enough(windows, stream, files, split, needed, sequence_length + 1)
    if shuffle:
        windows = windows.shuffle(shuffle_buffer_size, seed=seed)
    if repeat:
        windows = windows.repeat()
    dataset = windows.batch(per_batch, drop_remainder=drop_remainder)
    dataset = dataset.map(tokens.to_inputs_and_labels, num_parallel_calls=2)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    return dataset.with_options(_options()).prefetch(tf.data.AUTOTUNE)


def _options() -> tf.data.Options:
    """Auto-sharding by data, so `experimental_distribute_dataset` shards
    batches across workers like `input_context` shards windows."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return options


def _check_arguments(sequence_length, batch_size, split, fraction) -> None:
    if sequence_length < 1 or batch_size < 1:
        raise errors.InputError(
            "sequence_length and batch_size must be positive. Received: "
            f"sequence_length={sequence_length}, batch_size={batch_size}"
        )
    if split not in split_lib.SPLITS:
        raise errors.InputError(
            f"split must be one of {split_lib.SPLITS}. Received: "
            f"split={split!r}"
        )
    if not 0 <= fraction < 1 or (split == "validation" and fraction == 0):
        raise errors.InputError(
            "validation_fraction must be in [0, 1), and above 0 for the "
            f"validation split. Received: validation_fraction={fraction}"
        )


def _count(dataset: tf.data.Dataset, size) -> int:
    return int(
        dataset.reduce(tf.constant(0, tf.int64), lambda n, x: n + size(x))
    )


def _check_enough(windows, stream, files, split, needed, window) -> None:
    """Raises when a small corpus cannot fill one batch (per pipeline)."""
    if sum(os.path.getsize(f) for f in files) > _EXACT_CHECK_BYTES:
        return
    count = _count(windows.batch(1024), lambda b: tf.shape(b, tf.int64)[0])
    if count >= needed:
        return
    tokens = _count(stream, lambda ids: tf.size(ids, tf.int64))
    names = ", ".join(files[:3]) + (
        f" and {len(files) - 3} more" if len(files) > 3 else ""
    )
    part = "" if split == "all" else f"the {split!r} split of "
    fix = "Add text, or lower sequence_length or batch_size"
    if split == "validation":
        fix += ", raise validation_fraction, or name validation data"
    raise errors.InputError(
        f"{part}{names} has {tokens} token(s), but one batch needs {needed} "
        f"window(s) of sequence_length + 1 = {window} tokens "
        f"({needed * window} tokens; {count} window(s) found). {fix} (CLI: "
        "--sequence-length, --batch-size, --validation-fraction, "
        "--validation-data)."
    )
