"""Training windows read from prepared token shards (`tflm data prepare`).

Each shard is cut into windows of `sequence_length + 1` tokens (a window
never crosses shards; a shard's tail shorter than a window is dropped).
Every epoch visits every window of the split exactly once, in an order
drawn from `seed` and the epoch alone:

- the shards of the whole corpus are put in a seeded random order
  (`tf.random.experimental.index_shuffle`: a permutation computed per
  index, with no table held);
- consecutive shards of that order are read `GROUP_SHARDS` at a time, and
  the windows of a group are permuted together, so that each batch draws
  from that many places spread over the whole corpus.

Memory holds a group or two, never the corpus: about
`6 * GROUP_SHARDS * shard bytes` (uint16 shards of 2^20 tokens: under
250 MB), whatever the corpus size.

With several input pipelines (`tf.distribute.InputContext`, one per
worker), pipeline `i` of `n` takes groups `i, i + n, ...`: each worker
reads only the shards it trains on, and together they read every shard
once per epoch. Resuming at a window (`skip_windows`) starts at its group,
found from the shard sizes in the manifest, without reading what came
before.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.data import manifest as prepare_lib
from tflm.data import tokens
from tflm.tokenizers import base

GROUP_SHARDS = 16
DAMAGED = "tflm: damaged prepared shards:"
DAMAGED_END = ":end of damaged shards"
_SPLITS = ("train", "validation", "all")


class Prepared(NamedTuple):
    """A checked prepared folder."""

    directory: str
    manifest: dict[str, Any]
    dtype: str

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    def shards(self, split: str) -> list[dict[str, Any]]:
        """The shards of `split` (`"train"`, `"validation"` or `"all"`)."""
        return [
            s
            for s in self.manifest["shards"]
            if split == "all" or s["split"] == split
        ]

    def tokenizer(self) -> base.Tokenizer:
        """The tokenizer the shards were made with."""
        return base.load_tokenizer(
            os.path.join(self.directory, prepare_lib.TOKENIZER_DIR)
        )


def prepared_directory(
    paths: str | os.PathLike | Sequence[str],
) -> str | None:
    """The folder, when `paths` names exactly one prepared folder."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if len(paths) != 1:
        return None
    path = os.fspath(paths[0])
    if os.path.isfile(os.path.join(path, prepare_lib.MANIFEST)):
        return os.path.abspath(path)
    return None


def load(
    directory: str | os.PathLike, tokenizer: base.Tokenizer | None = None
) -> Prepared:
    """Reads and checks a prepared folder.

    Args:
        directory: the folder `tflm data prepare` wrote.
        tokenizer: when given, the shards must have been made with it.

    Raises:
        InputError: no manifest, a missing, truncated or resized shard,
            shards of another tokenizer, or a corpus changed since.
    """
    directory = os.path.abspath(os.fspath(directory))
    manifest = prepare_lib.read_manifest(directory)
    again = f"Prepare it again: `tflm data prepare ... --out {directory}`."
    if manifest is None:
        raise errors.InputError(
            f"{directory} holds no {prepare_lib.MANIFEST}: it is not "
            f"prepared data. {again}"
        )
    dtype = manifest["settings"]["dtype"]
    width = np.dtype(dtype).itemsize
    for shard in manifest["shards"]:
        path = os.path.join(directory, shard["file"])
        expected = shard["tokens"] * width
        try:
            size = os.path.getsize(path)
        except OSError:
            raise errors.InputError(
                f"{path} is missing from the prepared data. {again}"
            ) from None
        if size != expected:
            raise errors.InputError(
                f"{path} is truncated or damaged ({size:,} bytes; the "
                f"manifest says {expected:,}). {again}"
            )
    prepared = Prepared(directory, manifest, dtype)
    if tokenizer is not None:
        fingerprint = prepare_lib.tokenizer_fingerprint(tokenizer)
        if fingerprint != manifest["settings"]["tokenizer"]:
            raise errors.InputError(
                f"{directory} was prepared with another tokenizer than this "
                f"run's ({tokenizer.type_name}, {tokenizer.vocabulary_size} "
                "ids). Train with the folder's own tokenizer (--tokenizer "
                f"{os.path.join(directory, prepare_lib.TOKENIZER_DIR)}), or "
                "prepare the data again with this one."
            )
    changed = prepare_lib.changed_sources(manifest["sources"])
    if changed:
        names = ", ".join(changed[:3]) + (
            f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        raise errors.InputError(
            f"the corpus changed after {directory} was prepared ({names}). "
            f"Run `tflm data prepare` again to tokenize the new text."
        )
    return prepared


class _Layout(NamedTuple):
    """Where the windows of a split are: shard files, windows per shard,
    and how the shards group."""

    paths: np.ndarray
    windows: np.ndarray
    hashes: np.ndarray  # -1: not recorded
    window: int
    group: int
    groups: int  # per epoch


def _layout(prepared: Prepared, split: str, window: int, pipelines: int):
    shards = prepared.shards(split)
    paths = np.array(
        [os.path.join(prepared.directory, s["file"]) for s in shards]
    )
    windows = np.array([s["tokens"] // window for s in shards], np.int64)
    hashes = np.array([s.get("hash", -1) for s in shards], np.int64)
    count = len(shards)
    group = max(1, min(GROUP_SHARDS, -(-count // max(pipelines, 1))))
    return _Layout(paths, windows, hashes, window, group, -(-count // group))


def _order(count: int, seed: int, epoch, shuffle: bool):
    """Shard positions of an epoch in visiting order (graph or eager)."""
    positions = tf.range(count, dtype=tf.int64)
    if not shuffle or count < 2:
        return positions
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.index_shuffle(positions, key, count - 1)


def count_windows(prepared: Prepared, split: str, sequence_length: int) -> int:
    """Windows of `sequence_length + 1` tokens in one epoch of `split`."""
    window = sequence_length + 1
    return int(sum(s["tokens"] // window for s in prepared.shards(split)))


def windows(prepared: Prepared, split: str, sequence_length: int, **kwargs):
    """The windows of a split, int32 `[sequence_length + 1]` each; the
    arguments are those of `window_groups`."""
    return window_groups(prepared, split, sequence_length, **kwargs).unbatch()


def window_groups(
    prepared: Prepared,
    split: str,
    sequence_length: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    skip_windows: int = 0,
) -> tf.data.Dataset:
    """The windows of a split, a group of shards at a time.

    Args:
        prepared: from `load`.
        split: `"train"`, `"validation"` or `"all"`.
        sequence_length: tokens per example; windows hold one more.
        shuffle: the seeded order of the module docstring; otherwise the
            corpus order.
        seed: the order's seed (the same seed gives the same windows).
        repeat: every epoch after the first, each in a new order.
        input_context: this pipeline's place among several.
        skip_windows: windows this pipeline already used (a resumed run).

    Returns:
        A `tf.data.Dataset` of int32 `[n, sequence_length + 1]` windows,
        one element per group of shards (`unbatch` gives the windows).
    """
    if split not in _SPLITS:
        raise errors.InputError(
            f"split must be one of {_SPLITS}. Received: split={split!r}"
        )
    pipelines, pipeline = 1, 0
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        pipeline = input_context.input_pipeline_id
    window = sequence_length + 1
    layout = _layout(prepared, split, window, pipelines)
    if not len(layout.paths):
        return tf.data.Dataset.from_tensors(tf.zeros([0, window], tf.int32))
    first, within = _start(
        layout, seed, shuffle, pipeline, pipelines, skip_windows
    )
    end = None if repeat else layout.groups
    if end is not None and first >= end:
        first = end
    groups = tf.data.Dataset.range(first, end if end is not None else 2**62)
    groups = groups.filter(lambda g: g % pipelines == pipeline)
    read = _reader(layout, prepared.dtype, seed, shuffle, first, within)
    # One group read while the one before is consumed: a group lasts far
    # longer than it takes to read, and each one in flight costs memory.
    return groups.map(read).prefetch(1)


def _group_windows(layout: _Layout, seed, epoch: int, shuffle) -> np.ndarray:
    """Windows in each group of an epoch, in the reader's order."""
    order = _order(len(layout.paths), seed, epoch, shuffle).numpy()
    sizes = layout.windows[order]
    padded = np.zeros(layout.groups * layout.group, np.int64)
    padded[: sizes.size] = sizes
    return padded.reshape(layout.groups, layout.group).sum(axis=1)


def _start(layout, seed, shuffle, pipeline, pipelines, skip):
    """The first group this pipeline reads and the windows of it to skip,
    for a pipeline that already used `skip` windows."""
    if not skip or not layout.windows.sum():
        return pipeline, 0
    g, epoch, sizes = pipeline, None, None
    # Bounded: a pipeline may find no window in a group (a short last
    # shard), but `make_dataset` checked that it finds some each epoch.
    for _ in range(1 << 24):
        # Groups are numbered over all epochs, as the reader filters them.
        if g // layout.groups != epoch:
            epoch = g // layout.groups
            sizes = _group_windows(layout, seed, epoch, shuffle)
        size = int(sizes[g % layout.groups])
        if skip < size:
            return g, skip
        skip -= size
        g += pipelines
    return g, 0


def _check_pipelines(prepared, split, sequence_length, seed, shuffle, context):
    """Raises unless this input pipeline's groups hold windows."""
    pipelines = context.num_input_pipelines
    layout = _layout(prepared, split, sequence_length + 1, pipelines)
    sizes = _group_windows(layout, seed, 0, shuffle)
    if not sizes[context.input_pipeline_id :: pipelines].sum():
        raise errors.InputError(
            f"{prepared.directory} has too few shards ({len(layout.paths)}) "
            f"for {pipelines} input pipelines (workers) to each get windows "
            f"of {sequence_length + 1} tokens. Prepare it again with a "
            "smaller --shard-tokens."
        )


def _reader(layout: _Layout, dtype: str, seed, shuffle, first, within):
    paths = tf.constant(layout.paths)
    sizes = tf.constant(layout.windows)
    hashes = tf.constant(layout.hashes)
    count = len(layout.paths)
    group, per_epoch, window = layout.group, layout.groups, layout.window
    width = np.dtype(dtype).itemsize
    tf_dtype = tf.uint16 if dtype == "uint16" else tf.int32

    def read(g):
        epoch, index = g // per_epoch, g % per_epoch
        order = _order(count, seed, epoch, shuffle)
        picked = order[index * group : (index + 1) * group]
        files = tf.gather(paths, picked)
        contents = tf.map_fn(
            tf.io.read_file,
            files,
            fn_output_signature=tf.string,
            parallel_iterations=group,
        )
        contents = _checked(contents, files, tf.gather(hashes, picked))
        used = tf.gather(sizes, picked) * window * width
        used = tf.cast(used, tf.int32)
        contents = tf.strings.substr(contents, tf.zeros_like(used), used)
        ids = tf.io.decode_raw(tf.strings.reduce_join(contents), tf_dtype)
        ids = tf.reshape(ids, [-1, window])
        if shuffle:
            # Permuted before the cast: half the bytes moved for uint16.
            key = tf.stack([tf.cast(seed, tf.int64) + 1, g])
            ids = tf.random.experimental.stateless_shuffle(ids, key)
        ids = tf.cast(ids, tf.int32)
        # A resumed pipeline starts inside its first group.
        start = tf.where(g == first, tf.constant(within, tf.int64), 0)
        return ids[start:]

    return read


def _checked(contents, files, expected):
    """`contents`, once their hashes match the manifest's (an
    `InvalidArgumentError` naming the damaged files otherwise)."""
    found = tf.strings.to_hash_bucket_fast(contents, prepare_lib.HASH_BUCKETS)
    bad = tf.logical_and(expected >= 0, tf.not_equal(found, expected))
    named = tf.strings.reduce_join(tf.boolean_mask(files, bad), separator=",")
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)), [DAMAGED, named, DAMAGED_END]
    )
    with tf.control_dependencies([check]):
        return tf.identity(contents)


@contextlib.contextmanager
def damaged_shards_refused():
    """Turns the in-graph check of `_checked`, failing inside `fit` or
    `evaluate`, into an `InputError` naming the damaged shards; other
    errors pass through."""
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        found = re.search(
            re.escape(DAMAGED)
            + r"\]\s*\[(.*?)\]\s*\["
            + re.escape(DAMAGED_END),
            str(err),
            re.S,
        )
        if not found:
            raise
        raise errors.InputError(
            f"{found.group(1).replace(',', ', ')}: the shard's contents do "
            "not match the prepared data's manifest (the file was changed "
            "or damaged). Prepare the data again: `tflm data prepare ...`."
        ) from None


def make_dataset(
    directory: str | os.PathLike,
    tokenizer: base.Tokenizer | None,
    *,
    sequence_length: int,
    batch_size: int,
    split: str = "train",
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool | None = None,
    repeat: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    skip_batches: int = 0,
    data_service: str | None = None,
    job_name: str | None = None,
) -> tf.data.Dataset:
    """`tflm.data.make_dataset` for a prepared folder: batches of
    `(x, y, sample_weight)` from its shards (see the module docstring).

    `split="validation"` reads the held-out shards; `"all"` reads every
    shard. `skip_batches` drops the batches a resumed run already used,
    without reading them. With `data_service` (`grpc://HOST:PORT` of a
    tf.data service dispatcher) the service's workers read and permute the
    groups of shards (`tflm.data.service`) and the trainers that share
    `job_name` share them; `input_context` then only sizes the batches.
    """
    prepared = load(directory, tokenizer)
    if drop_remainder is None:
        drop_remainder = split != "validation"
    per_batch = batch_size
    if input_context is not None:
        per_batch = input_context.get_per_replica_batch_size(batch_size)
    available = count_windows(prepared, split, sequence_length)
    pipelines = input_context.num_input_pipelines if input_context else 1
    needed = per_batch * pipelines if drop_remainder else 1
    if available < needed:
        side = "" if split == "all" else f"the {split!r} shards of "
        raise errors.InputError(
            f"{side}{prepared.directory} hold {available} window(s) of "
            f"sequence_length + 1 = {sequence_length + 1} tokens, but one "
            f"batch needs {needed}. Prepare more text, lower "
            "--sequence-length or --batch-size"
            + (
                ", or prepare with a larger --validation-fraction or a "
                "smaller --shard-tokens"
                if split == "validation"
                else ""
            )
            + "."
        )
    skip_windows = skip_batches * per_batch
    if data_service:
        # The service deals groups to its workers: windows are counted over
        # every trainer of the job, and no pipeline filters its own.
        skip_windows *= pipelines
    if input_context is not None and not data_service:
        _check_pipelines(
            prepared, split, sequence_length, seed, shuffle, input_context
        )
    dataset = window_groups(
        prepared,
        split,
        sequence_length,
        shuffle=shuffle,
        seed=seed,
        repeat=repeat,
        input_context=None if data_service else input_context,
        skip_windows=skip_windows,
    )
    if data_service:
        from tflm.data import service

        dataset = service.distribute(dataset, data_service, job_name)
    dataset = dataset.rebatch(per_batch, drop_remainder=drop_remainder)
    dataset = dataset.map(tokens.to_inputs_and_labels, num_parallel_calls=2)
    options = tf.data.Options()
    # Each pipeline reads its own shards: nothing to shard again.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
        if input_context is not None or data_service
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
