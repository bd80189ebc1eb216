"""The prepared-data folder's names and manifest (`tflm data prepare`).

DATA_DIR/
    prepared.json          the manifest (`MANIFEST`): settings, sources,
                           each shard's tokens, split and content hash
    shard-00000.tokens     raw little-endian ids, `uint16` (`int32` above
                           65,536 ids)
    tokenizer/             the tokenizer the shards were made with
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tflm import digests
from tflm import errors
from tflm.tokenizers import base

MANIFEST = "prepared.json"
FORMAT = "tflm-prepared"
FORMAT_VERSION = 1
TOKENIZER_DIR = "tokenizer"
SHARD_SUFFIX = ".tokens"
HASH_BUCKETS = (1 << 63) - 1


def content_hash(raw: bytes) -> int:
    """A shard's FarmHash Fingerprint64 (modulo `HASH_BUCKETS`), the one
    `tf.strings.to_hash_bucket_fast` computes in-graph when it is read."""
    return int(tf.strings.to_hash_bucket_fast(raw, HASH_BUCKETS))


def shard_name(index: int) -> str:
    """`shard-00042.tokens`."""
    return f"shard-{index:05d}{SHARD_SUFFIX}"


def token_dtype(vocabulary_size: int) -> str:
    """`"uint16"` when every id fits in 16 bits, else `"int32"`."""
    return "uint16" if vocabulary_size <= 1 << 16 else "int32"


def is_validation_shard(index: int, fraction: float) -> bool:
    """Whether shard `index` is held out: evenly spaced, so that `fraction`
    of the shards (in the long run) are, spread through the corpus.

    Example:
    >>> [i for i in range(30) if is_validation_shard(i, 0.1)]
    [9, 19, 29]
    """
    return int((index + 1) * fraction + 1e-9) > int(index * fraction + 1e-9)


def tokenizer_fingerprint(tokenizer: base.Tokenizer) -> str:
    """A SHA-256 over the files the tokenizer saves: two tokenizers with
    the same fingerprint give the same ids."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tflm-tokenizer-") as directory:
        tokenizer.write_files(directory)
        return digests.tree_sha256(directory)


def file_hash(path: str) -> str:
    """A file's SHA-256, read once per process while its size and
    modification time hold."""
    stat = os.stat(path)
    return _file_hash(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # The cache key.
    return digests.file_sha256(path)


def describe_sources(files: Sequence[str]) -> list[dict[str, Any]]:
    """Path, size and modification time of each source file."""
    described = []
    for path in files:
        stat = os.stat(path)
        described.append(
            dict(path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        )
    return described


def changed_sources(sources: list[dict[str, Any]]) -> list[str]:
    """The recorded source files whose size or content changed since (a
    file whose time changed but whose hash did not is unchanged). Files
    that are gone are not counted: shards do not need their text."""
    changed = []
    for source in sources:
        path = source["path"]
        try:
            stat = os.stat(path)
        except OSError:
            continue
        if (stat.st_size, stat.st_mtime_ns) == (
            source["size"],
            source["mtime_ns"],
        ):
            continue
        if stat.st_size != source["size"] or (
            source.get("sha256") and file_hash(path) != source["sha256"]
        ):
            changed.append(path)
    return changed


def write_json(path: str, content: dict) -> None:
    temp = path + ".tmp"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def read_manifest(directory: str) -> dict[str, Any] | None:
    """The manifest of a prepared folder, or None if it holds none."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise errors.InputError(
            f"{path} is not a readable manifest ({err}). Prepare the data "
            "again with `tflm data prepare`."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise errors.InputError(
            f"{path} is not a tflm prepared-data manifest. Prepare the data "
            "again with `tflm data prepare`."
        )
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise errors.InputError(
            f"{directory} was prepared by a newer tflm (format "
            f"{manifest.get('format_version')}); upgrade tflm or prepare "
            "the data again."
        )
    return manifest


def build(state: dict) -> dict:
    """The manifest of a finished preparation's state."""
    splits: dict[str, dict] = {}
    for shard in state["shards"]:
        side = splits.setdefault(shard["split"], dict(shards=[], tokens=0))
        side["shards"].append(shard["file"])
        side["tokens"] += shard["tokens"]
    return dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        complete=True,
        settings=state["settings"],
        tokens=state["tokens"],
        shards=state["shards"],
        splits=splits,
        sources=state["sources"],
    )
