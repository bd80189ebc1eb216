"""`tflm data prepare`: a corpus tokenized once, into fixed-size token shards.

The corpus is read streaming: a text file in blocks of about
`BLOCK_BYTES`, each cut where the tokenizer gives the same ids to the pieces
as to the whole (after a newline, see `Tokenizer.line_start_is_boundary`),
a `.jsonl` file a block of records at a time. Blocks are tokenized by a
`tf.data` map over all cores (in order), with `eos_id` after each document,
exactly as the in-memory pipeline (`tflm.data.pipeline.token_stream`)
tokenizes the same files. The stream is cut into shards of `shard_tokens`
tokens (the last one shorter): raw little-endian `uint16` ids (`int32` for
vocabularies above 65,536), which `tf.io.decode_raw` reads without Python.

DATA_DIR/
    prepared.json          the manifest (`MANIFEST`): settings, sources,
                           each shard's tokens, split and content hash
    shard-00000.tokens     ...
    tokenizer/             the tokenizer the shards were made with

Shards are held out for validation evenly through the corpus
(`is_validation_shard`), so the validation text is a fair sample of all of
it; a corpus of fewer shards than that needs holds out its last one (a
corpus of one shard has no validation split). A run is written in
`.NAME.tflm-preparing` beside `DATA_DIR` and moved into place when
complete: the old `DATA_DIR` stays whole until then. After
each shard the folder records where the stream stands, so a killed run
continues from its last finished shard; a rerun over an unchanged corpus
with the same tokenizer and settings does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tflm import atomic
from tflm import errors
from tflm.data import blocks as blocks_lib
from tflm.data import corpus
from tflm.data import files as files_lib
from tflm.data import manifest as manifest_lib
from tflm.tokenizers import base

logger = logging.getLogger(__name__)

DEFAULT_SHARD_TOKENS = 1 << 20
# A shard's bytes fit an int32 offset (int32 ids: 1 GiB).
MAX_SHARD_TOKENS = 1 << 28
_STAGING = "tflm-preparing"
_STATE = "state.json"
_LOG = "shards.jsonl"
# The entries of a prepared folder that tflm writes (shards aside).
OWNED = frozenset({"prepared.json", "tokenizer", _STATE, _LOG})

# The folder's names, for callers of this module.
MANIFEST = manifest_lib.MANIFEST
TOKENIZER_DIR = manifest_lib.TOKENIZER_DIR
SHARD_SUFFIX = manifest_lib.SHARD_SUFFIX
shard_name = manifest_lib.shard_name
is_validation_shard = manifest_lib.is_validation_shard
read_manifest = manifest_lib.read_manifest


class _Progress:
    """`prepared 1.2 GB of 3.4 GB: 210,000,000 tokens, 1,250,000 tokens/s,
    2:01 left`, rewritten in place on a terminal, a line every 10 s
    elsewhere."""

    def __init__(
        self, total_bytes: int, done_bytes: int, done_tokens: int, stream=None
    ):
        self.total = max(total_bytes, 1)
        self.start_bytes = done_bytes
        self.start_tokens = done_tokens
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self.started = time.monotonic()
        self.shown = 0.0
        self.line = False

    def update(self, done_bytes: int, tokens: int, final=False) -> None:
        now = time.monotonic()
        every = 0.5 if self.interactive else 10.0
        if not final and now - self.shown < every:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = (done_bytes - self.start_bytes) / elapsed
        text = (
            f"prepared {atomic.megabytes(done_bytes)} of "
            f"{atomic.megabytes(self.total)} MB: {tokens:,} tokens, "
            f"{(tokens - self.start_tokens) / elapsed:,.0f} tokens/s"
        )
        if rate > 0 and not final:
            left = (self.total - done_bytes) / rate
            minutes, seconds = divmod(int(left), 60)
            text += f", {minutes}:{seconds:02d} left"
        if self.interactive:
            self.stream.write("\r" + text + "\033[K")
            self.line = True
            if final:
                self.stream.write("\n")
                self.line = False
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.line:
            self.stream.write("\n")
            self.stream.flush()
            self.line = False


def prepare(
    paths: str | os.PathLike | Sequence[str],
    tokenizer: base.Tokenizer,
    out: str | os.PathLike,
    *,
    text_format: str = "document",
    jsonl_field: str = "text",
    validation_fraction: float = 0.1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Tokenizes a corpus once into token shards in `out`.

    Args:
        paths: files, folders or glob patterns (`.txt`, `.jsonl`).
        tokenizer: the tokenizer; a copy is saved in `out/tokenizer`.
        out: the folder to write (`DATA_DIR`).
        text_format: `"document"`, `"paragraph"` or `"line"`, as for
            `make_dataset`.
        jsonl_field: the text field of `.jsonl` records.
        validation_fraction: share of the shards held out for validation
            (see `is_validation_shard`); 0 holds out none.
        shard_tokens: tokens per shard.
        overwrite: replace an `out` that holds something else than
            prepared data.
        progress: show a progress line on standard output.
        threads: threads that tokenize (default: one per core).

    Returns:
        The manifest (also written to `out/prepared.json`).

    Raises:
        InputError: bad arguments, no text, a file that is not UTF-8, a bad
            `.jsonl` line, an `out` that holds other files, a full disk.
    """
    corpus.check_format(text_format)
    if not 1 <= shard_tokens <= MAX_SHARD_TOKENS:
        raise errors.InputError(
            f"shard_tokens must be in 1-{MAX_SHARD_TOKENS:,} (CLI: "
            f"--shard-tokens). Received: {shard_tokens}"
        )
    if not 0 <= validation_fraction < 1:
        raise errors.InputError(
            "validation_fraction must be in [0, 1). Received: "
            f"validation_fraction={validation_fraction}"
        )
    target = atomic.resolve(out)
    files = blocks_lib.ordered(files_lib.find_files(paths, exclude=[target]))
    _check_outside(files, target)
    settings = dict(
        tokenizer=manifest_lib.tokenizer_fingerprint(tokenizer),
        text_format=text_format,
        jsonl_field=jsonl_field,
        validation_fraction=validation_fraction,
        shard_tokens=shard_tokens,
        dtype=manifest_lib.token_dtype(tokenizer.vocabulary_size),
    )
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    with atomic.lock(target):
        atomic.sweep(parent, name, OWNED)
        existing = _existing(target)
        sources = manifest_lib.describe_sources(files)
        if existing is not None and _up_to_date(existing, settings, sources):
            logger.info(
                "%s is up to date (%s tokens): nothing to do.",
                target,
                f"{existing['tokens']:,}",
            )
            return existing
        clash = atomic.existing_entries(target, None)
        ours = MANIFEST in clash  # Prepared once, if unreadable now.
        if existing is None and clash and not ours and not overwrite:
            raise errors.InputError(
                f"--out {target} already holds {', '.join(clash[:3])}, "
                "which is not prepared data. Name a new folder, or pass "
                "--overwrite to write the shards there (the files there "
                "are kept, but for a prepared.json, tokenizer/ or shards)."
            )
        if existing is not None:
            logger.info(
                "%s was prepared from another corpus, tokenizer or "
                "settings: preparing it again (the old shards stay until "
                "the new ones are complete).",
                target,
            )
        for source in sources:
            if not source["path"].endswith(".jsonl"):
                corpus.check_utf8(source["path"])
            source["sha256"] = manifest_lib.file_hash(source["path"])
        staging = staging_dir(target)
        try:
            manifest = _run(
                files, sources, settings, tokenizer, staging, progress, threads
            )
            _publish(staging, target)
        except BaseException as err:
            if atomic.is_no_space(err):
                written = atomic.tree_size(staging)
                shutil.rmtree(staging, ignore_errors=True)
                raise atomic.no_space(parent, written) from err
            raise
    return manifest


def staging_dir(target: str) -> str:
    """Where a preparation of `target` is written until it is complete."""
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{name}.{_STAGING}")


def _check_outside(files: list[str], target: str) -> None:
    """Refuses sources inside `target`: publishing replaces its entries."""
    inside = [f for f in files if os.path.commonpath([f, target]) == target]
    if inside:
        raise errors.InputError(
            f"--data {inside[0]} lies inside --out {target}, which preparing "
            "replaces. Name an --out outside the corpus."
        )


def _existing(target: str) -> dict[str, Any] | None:
    """`target`'s manifest; None where there is none or it cannot be read
    (it is then prepared again)."""
    if not os.path.isdir(target):
        return None
    try:
        return manifest_lib.read_manifest(target)
    except errors.InputError as err:
        logger.warning("%s Preparing it again.", err)
        return None


def _up_to_date(existing, settings, sources) -> bool:
    recorded = existing.get("settings")
    if recorded != settings or not existing.get("complete"):
        return False
    paths = [s["path"] for s in existing.get("sources", [])]
    if paths != [s["path"] for s in sources]:
        return False
    return not manifest_lib.changed_sources(existing["sources"])


class _Writer:
    """Writes shards into the staging folder and logs each one, with the
    stream position after it, in `shards.jsonl` (appended, not
    rewritten: the log stays linear in the shards)."""

    def __init__(self, staging: str, settings: dict, shards: list):
        self.staging = staging
        self.dtype = np.dtype(settings["dtype"]).newbyteorder("<")
        self.fraction = settings["validation_fraction"]
        self.shards = shards
        self.tokens = sum(s["tokens"] for s in shards)

    def write(self, ids: np.ndarray, position) -> None:
        index = len(self.shards)
        name = manifest_lib.shard_name(index)
        raw = ids.astype(self.dtype).tobytes()
        with open(os.path.join(self.staging, name), "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        held_out = manifest_lib.is_validation_shard(index, self.fraction)
        shard = dict(
            file=name,
            tokens=int(ids.size),
            split="validation" if held_out else "train",
            hash=manifest_lib.content_hash(raw),
            position=list(position),
        )
        with open(os.path.join(self.staging, _LOG), "a") as f:
            f.write(json.dumps(shard) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.shards.append(shard)
        self.tokens += shard["tokens"]


def _run(
    files, sources, settings, tokenizer, staging, progress, threads
) -> dict:
    shards = _resume(staging, settings, sources)
    if shards is None:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        tokenizer.write_files(os.path.join(staging, manifest_lib.TOKENIZER_DIR))
        state = dict(settings=settings, sources=sources)
        manifest_lib.write_json(os.path.join(staging, _STATE), state)
        shards = []
    else:
        logger.info(
            "Continuing an interrupted preparation from shard %d.",
            len(shards),
        )
    writer = _Writer(staging, settings, shards)
    file_index, offset, skip = shards[-1]["position"] if shards else (0, 0, 0)
    starts = np.cumsum([0] + [s["size"] for s in sources])
    bar = None
    if progress:
        bar = _Progress(
            int(starts[-1]), int(starts[file_index]) + offset, writer.tokens
        )
    try:
        buffered = _stream(
            files, settings, tokenizer, threads, writer, (file_index, offset),
            skip, bar, starts,
        )  # fmt: skip
        if buffered.size:
            writer.write(buffered, (len(files), 0, 0))
        if bar is not None:
            bar.update(int(starts[-1]), writer.tokens, final=True)
    finally:
        if bar is not None:
            bar.close()
    if not shards:
        raise errors.InputError(
            f"the corpus is empty: {', '.join(files[:3])} hold no text. "
            "Point --data at non-empty files."
        )
    entries = [{k: v for k, v in s.items() if k != "position"} for s in shards]
    held_out = [s for s in entries if s["split"] == "validation"]
    if (
        settings["validation_fraction"] > 0
        and not held_out
        and len(entries) > 1
    ):
        # Fewer shards than one in `fraction`: the last one is held out.
        entries[-1]["split"] = "validation"
    manifest = manifest_lib.build(
        dict(settings=settings, sources=sources, shards=entries,
             tokens=writer.tokens)
    )  # fmt: skip
    manifest_lib.write_json(
        os.path.join(staging, manifest_lib.MANIFEST), manifest
    )
    return manifest


def _stream(
    files, settings, tokenizer, threads, writer, start, skip, bar, starts
) -> np.ndarray:
    """Tokenizes from `start`, drops the first `skip` ids (already in
    shards), writes every full shard; returns the ids left over."""
    shard_tokens = settings["shard_tokens"]
    text_format = settings["text_format"]
    blocks = blocks_lib.read_blocks(
        files, start, text_format, settings["jsonl_field"], tokenizer
    )
    buffer: list[np.ndarray] = []
    buffered = 0
    for block, ids in blocks_lib.tokenized(
        blocks, tokenizer, text_format, threads
    ):
        # A resumed run may cut its first blocks elsewhere than the run it
        # continues; the ids from a block's start are the same either way.
        dropped = min(skip, ids.size)
        ids, skip = ids[dropped:], skip - dropped
        buffer.append(ids)
        buffered += ids.size
        if buffered >= shard_tokens:
            flat = np.concatenate(buffer) if len(buffer) > 1 else buffer[0]
            used = 0
            while flat.size - used >= shard_tokens:
                rest = flat.size - used - shard_tokens
                # The rest is the end of this block: a rerun starts at the
                # block and skips its ids already in shards.
                written = dropped + ids.size - rest
                writer.write(
                    flat[used : used + shard_tokens],
                    (block.file, block.offset, written),
                )
                used += shard_tokens
            buffer, buffered = [flat[used:]], flat.size - used
        if bar is not None:
            done = int(starts[block.file]) + block.offset
            bar.update(done + sum(len(t) for t in block.texts), writer.tokens)
    if not buffer:
        return np.zeros([0], np.int32)
    return np.concatenate(buffer) if len(buffer) > 1 else buffer[0]


def _resume(staging, settings, sources) -> list | None:
    """The shards an interrupted run of the same preparation finished, or
    None to start over."""
    try:
        with open(os.path.join(staging, _STATE), encoding="utf-8") as f:
            state = json.load(f)
        with open(os.path.join(staging, _LOG), encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, ValueError):
        return None
    keys = ("path", "size", "mtime_ns", "sha256")
    recorded = [{k: s.get(k) for k in keys} for s in state.get("sources", [])]
    if state.get("settings") != settings or recorded != [
        {k: s[k] for k in keys} for s in sources
    ]:
        return None
    shards = []
    width = np.dtype(settings["dtype"]).itemsize
    for line in lines[:-1]:  # The last is empty, or cut by a kill.
        try:
            shard = json.loads(line)
            size = os.path.getsize(os.path.join(staging, shard["file"]))
        except (OSError, ValueError, KeyError, TypeError):
            break
        if size != shard["tokens"] * width:
            break
        shards.append(shard)
    # Shards not logged were half-written: remove them.
    known = {s["file"] for s in shards}
    for entry in os.listdir(staging):
        if entry.endswith(manifest_lib.SHARD_SUFFIX) and entry not in known:
            os.remove(os.path.join(staging, entry))
    with open(os.path.join(staging, _LOG), "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in shards)
    return shards


def _publish(staging: str, target: str) -> None:
    """Moves the finished staging folder to `target` in one step; entries
    of an old `target` that tflm did not write are kept."""
    parent, name = os.path.split(target)
    with atomic.staged(parent, name) as temp:
        os.rmdir(temp)
        os.rename(staging, temp)
        for entry in (_STATE, _LOG):
            os.remove(os.path.join(temp, entry))
        # The old shards go too: the new folder supersedes them.
        owned = OWNED | _shards(target)
        atomic.publish(temp, target, replace=True, owned=owned)


def _shards(directory: str) -> set[str]:
    if not os.path.isdir(directory):
        return set()
    return {
        e
        for e in os.listdir(directory)
        if e.endswith(manifest_lib.SHARD_SUFFIX)
    }
