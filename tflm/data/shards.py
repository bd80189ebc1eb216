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

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tflm import atomic
from tflm import errors
from tflm.data import corpus
from tflm.data import files as files_lib
from tflm.data import jsonl
from tflm.data import tokens
from tflm.tokenizers import base

logger = logging.getLogger(__name__)

MANIFEST = "prepared.json"
FORMAT = "tflm-prepared"
FORMAT_VERSION = 1
TOKENIZER_DIR = "tokenizer"
SHARD_SUFFIX = ".tokens"
DEFAULT_SHARD_TOKENS = 1 << 20
BLOCK_BYTES = 1 << 20
_STAGING = "tflm-preparing"
_STATE = "state.json"
HASH_BUCKETS = (1 << 63) - 1
_BLOCKS_IN_FLIGHT = 8
_BLANK = re.compile(rb"[\t\n\f\r ]*")
# Unicode White_Space in UTF-8 (what `\s` means to GPT-2's pattern).
_WHITE = (
    rb"[\t\n\x0b\f\r ]", rb"\xc2[\x85\xa0]", rb"\xe1\x9a\x80",
    rb"\xe2\x80[\x80-\x8a\xa8\xa9\xaf]", rb"\xe2\x81\x9f", rb"\xe3\x80\x80",
)  # fmt: skip
# A newline with text on both sides (read far enough to see the next
# character whole): a whitespace run around a newline pre-tokenizes
# differently at the end of a piece than before text (GPT-2: "\n\n" is one
# token at the end, two before a word).
_LONE_NEWLINE = re.compile(
    b"".join(rb"(?<!" + w + rb")" for w in _WHITE)
    + rb"\n(?=[\x00-\xff]{3})(?!" + rb"|".join(_WHITE) + rb")"
)  # fmt: skip


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
        return _tree_hash(directory)


def _tree_hash(directory: str) -> str:
    digest = hashlib.sha256()
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


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
            source.get("sha256") and _file_hash(path) != source["sha256"]
        ):
            changed.append(path)
    return changed


class _Block:
    """A piece of the corpus: where it starts, its texts, and which of them
    end a document."""

    __slots__ = ("file", "offset", "texts", "ends")

    def __init__(self, file: int, offset: int, texts: list, ends: list):
        self.file, self.offset, self.texts, self.ends = (
            file,
            offset,
            texts,
            ends,
        )


def _cut_pattern(text_format: str, tokenizer: base.Tokenizer):
    """Where a text file may be cut: after the match."""
    if text_format == "line":
        return re.compile(rb"\n")
    if text_format == "paragraph":
        # A whole blank-line break, followed by text.
        return re.compile(rb"\n[\t\n\f\r ]*\n(?=[^\t\n\f\r ])")
    if tokenizer.newline_is_boundary:
        return re.compile(rb"\n")
    if tokenizer.line_start_is_boundary:
        return _LONE_NEWLINE
    return None  # Documents are tokenized whole.


def _text_blocks(
    index: int, path: str, offset: int, text_format: str, cut
) -> Iterator[_Block]:
    """Blocks of a text file from byte `offset`, each cut after the last
    match of `cut` in about `BLOCK_BYTES` (longer where none matches)."""
    size = os.path.getsize(path)
    document = text_format == "document"
    if cut is None and size - offset >= _WHOLE_WARNING_BYTES:
        _warn_whole(path, "this tokenizer cannot tokenize a text in pieces")
    warned = False
    with open(path, "rb") as f:
        f.seek(offset)
        pending = b""
        while True:
            want = BLOCK_BYTES if cut is not None else size
            data = pending + f.read(max(want - len(pending), len(pending)))
            at_end = f.tell() >= size
            if not at_end:
                last = _last_match(cut, data)
                if last is None:  # No cut yet: read on.
                    if not warned and len(data) >= _WHOLE_WARNING_BYTES:
                        warned = True
                        _warn_whole(path, _NO_CUT[text_format])
                    pending = data
                    continue
                data, pending = data[: last.end()], data[last.end() :]
            whole = offset == 0 and at_end
            if document and whole and _BLANK.fullmatch(data):
                return  # A blank file is no document.
            if data or (document and at_end):
                ends = [at_end] if document else [True]
                yield _Block(index, offset, [data], ends)
            offset += len(data)
            if at_end:
                return


_WHOLE_WARNING_BYTES = 64 << 20
_NO_CUT = {
    "document": "none of its newlines has text on both sides (as in files "
    "with Windows line ends), where this tokenizer allows a cut",
    "paragraph": "it has no blank line",
    "line": "it has no newline",
}


def _warn_whole(path: str, why: str) -> None:
    logger.warning(
        "%s is read as one piece of 64 MB or more, because %s: memory grows "
        "with it. Convert Windows line ends (`dos2unix`), or prepare with "
        "--text-format line or paragraph.",
        path,
        why,
    )


def _last_match(cut, data: bytes):
    """The last match of `cut` in `data` (looked for in its second half
    first), or None."""
    if cut is None:
        return None
    for start in (len(data) // 2, 0):
        found = None
        for found in cut.finditer(data, start):  # noqa: B007
            pass
        if found is not None:
            return found
    return None


def _jsonl_blocks(
    index: int, path: str, offset: int, field: str, text_format: str
) -> Iterator[_Block]:
    """Blocks of `.jsonl` records from byte `offset`, each record's text
    one piece."""
    with open(path, "rb") as f:
        f.seek(offset)
        line_number = _line_at(path, offset)
        texts: list[bytes] = []
        start, size = offset, 0
        for raw in f:
            line_number += 1
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise files_lib.not_utf8(
                    path, line_number, offset + err.start
                ) from None
            offset += len(raw)
            if line.strip():
                record = jsonl._parse(line, where)
                text = jsonl._field_text(record, field, where).encode()
                if text_format != "document" or not _BLANK.fullmatch(text):
                    texts.append(text)
                    size += len(text)
            if size >= BLOCK_BYTES:
                yield _Block(index, start, texts, [True] * len(texts))
                texts, start, size = [], offset, 0
        if texts:
            yield _Block(index, start, texts, [True] * len(texts))


def _line_at(path: str, offset: int) -> int:
    """Lines before byte `offset` (for messages on resumed runs)."""
    if not offset:
        return 0
    count = 0
    with open(path, "rb") as f:
        left = offset
        while left > 0:
            block = f.read(min(left, 1 << 22))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def _blocks(
    files: Sequence[str],
    start: tuple[int, int],
    text_format: str,
    field: str,
    tokenizer: base.Tokenizer,
) -> Iterator[_Block]:
    cut = _cut_pattern(text_format, tokenizer)
    for index, path in enumerate(files):
        if index < start[0]:
            continue
        offset = start[1] if index == start[0] else 0
        if path.endswith(".jsonl"):
            yield from _jsonl_blocks(index, path, offset, field, text_format)
        else:
            yield from _text_blocks(index, path, offset, text_format, cut)


def _ordered(files: Sequence[str]) -> list[str]:
    """Text files first, then `.jsonl` files, as the in-memory pipeline
    reads them."""
    texts = [f for f in files if not f.endswith(".jsonl")]
    return texts + [f for f in files if f.endswith(".jsonl")]


def _tokenized(
    blocks: Iterator[_Block],
    tokenizer: base.Tokenizer,
    text_format: str,
    threads: int | None = None,
) -> Iterator[tuple[_Block, np.ndarray]]:
    """Each block with its token ids, tokenized in parallel, in order."""
    held: dict[int, _Block] = {}

    failed: list[BaseException] = []

    def numbered():
        # An error here (a bad `.jsonl` line) would reach the caller as a
        # TensorFlow error: it is kept and raised as itself below.
        try:
            for number, block in enumerate(blocks):
                held[number] = block
                yield number, block.texts, block.ends
        except Exception as err:  # noqa: BLE001 - re-raised below.
            failed.append(err)

    dataset = tf.data.Dataset.from_generator(
        numbered,
        output_signature=(
            tf.TensorSpec([], tf.int64),
            tf.TensorSpec([None], tf.string),
            tf.TensorSpec([None], tf.bool),
        ),
    )
    document = text_format == "document"

    def tokenize(number, texts, ends):
        if not document:
            # Each piece (a `.jsonl` record, or a block of whole lines or
            # paragraphs) splits into documents, each ending in eos.
            texts = corpus.split_texts(texts, text_format)
            ends = tf.ones_like(texts, tf.bool)
        return number, tokens.tokenize_pieces(texts, ends, tokenizer)

    dataset = dataset.map(
        tokenize,
        num_parallel_calls=threads or tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(_BLOCKS_IN_FLIGHT)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        dataset = dataset.with_options(options)
    for number, ids in dataset.as_numpy_iterator():
        yield held.pop(int(number)), ids
    if failed:
        raise failed[0]


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


def _write_json(path: str, content: dict) -> None:
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
    if shard_tokens < 1:
        raise errors.InputError(
            f"shard_tokens must be positive. Received: {shard_tokens}"
        )
    if not 0 <= validation_fraction < 1:
        raise errors.InputError(
            "validation_fraction must be in [0, 1). Received: "
            f"validation_fraction={validation_fraction}"
        )
    target = atomic.resolve(out)
    files = _ordered(files_lib.find_files(paths, exclude=[target]))
    settings = dict(
        tokenizer=tokenizer_fingerprint(tokenizer),
        text_format=text_format,
        jsonl_field=jsonl_field,
        validation_fraction=validation_fraction,
        shard_tokens=shard_tokens,
        dtype=token_dtype(tokenizer.vocabulary_size),
    )
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    with atomic.lock(target):
        existing = read_manifest(target) if os.path.isdir(target) else None
        sources = describe_sources(files)
        if existing is not None and _up_to_date(existing, settings, sources):
            logger.info(
                "%s is up to date (%s tokens): nothing to do.",
                target,
                f"{existing['tokens']:,}",
            )
            return existing
        if existing is None and atomic.existing_entries(target, None):
            if not overwrite:
                raise errors.InputError(
                    f"--out {target} already holds files that are not "
                    "prepared data. Name a new folder, or pass --overwrite "
                    "to replace it."
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
            source["sha256"] = _file_hash(source["path"])
        staging = os.path.join(parent, f".{name}.{_STAGING}")
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


def _up_to_date(existing, settings, sources) -> bool:
    recorded = existing.get("settings")
    if recorded != settings or not existing.get("complete"):
        return False
    paths = [s["path"] for s in existing.get("sources", [])]
    if paths != [s["path"] for s in sources]:
        return False
    return not changed_sources(existing["sources"])


def _run(
    files, sources, settings, tokenizer, staging, progress, threads
) -> dict:
    state = _resume_state(staging, settings, sources)
    if state is None:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        state = dict(
            settings=settings,
            sources=sources,
            shards=[],
            position=[0, 0, 0],
            tokens=0,
        )
        _write_json(os.path.join(staging, _STATE), state)
    else:
        logger.info(
            "Continuing an interrupted preparation from shard %d.",
            len(state["shards"]),
        )
    shard_tokens = settings["shard_tokens"]
    dtype = np.dtype(settings["dtype"]).newbyteorder("<")
    fraction = settings["validation_fraction"]
    file_index, offset, skip = state["position"]
    total_bytes = sum(s["size"] for s in sources)
    done_bytes = sum(s["size"] for s in sources[:file_index]) + offset
    bar = (
        _Progress(total_bytes, done_bytes, state["tokens"])
        if progress
        else None
    )
    buffer: list[np.ndarray] = []
    buffered = 0
    tokens = state["tokens"]

    def write_shard(ids: np.ndarray, position) -> None:
        nonlocal tokens
        index = len(state["shards"])
        path = os.path.join(staging, shard_name(index))
        raw = ids.astype(dtype).tobytes()
        with open(path, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        split = (
            "validation" if is_validation_shard(index, fraction) else "train"
        )
        state["shards"].append(
            dict(
                file=shard_name(index),
                tokens=int(ids.size),
                split=split,
                hash=content_hash(raw),
            )
        )
        tokens += int(ids.size)
        state["tokens"] = tokens
        state["position"] = list(position)
        _write_json(os.path.join(staging, _STATE), state)

    blocks = _blocks(
        files, (file_index, offset), settings["text_format"],
        settings["jsonl_field"], tokenizer,
    )  # fmt: skip
    try:
        for block, ids in _tokenized(
            blocks, tokenizer, settings["text_format"], threads
        ):
            base_skip = 0
            if skip:
                ids, base_skip, skip = ids[skip:], skip, 0
            buffer.append(ids)
            buffered += ids.size
            while buffered >= shard_tokens:
                flat = np.concatenate(buffer)
                rest = flat[shard_tokens:]
                # The rest is the end of this block: a rerun starts at the
                # block and skips its ids that are already in shards.
                written = base_skip + ids.size - rest.size
                write_shard(
                    flat[:shard_tokens], (block.file, block.offset, written)
                )
                buffer, buffered = [rest], rest.size
            if bar is not None:
                done = sum(s["size"] for s in sources[: block.file])
                done += block.offset + sum(len(t) for t in block.texts)
                bar.update(done, tokens + buffered)
        if buffered:
            write_shard(np.concatenate(buffer), (len(files), 0, 0))
        if bar is not None:
            bar.update(total_bytes, tokens, final=True)
    finally:
        if bar is not None:
            bar.close()
    if not state["shards"]:
        raise errors.InputError(
            f"the corpus is empty: {', '.join(files[:3])} hold no text. "
            "Point --data at non-empty files."
        )
    held_out = [s for s in state["shards"] if s["split"] == "validation"]
    if fraction > 0 and not held_out and len(state["shards"]) > 1:
        # Fewer shards than one in `fraction`: the last one is held out.
        state["shards"][-1]["split"] = "validation"
    tokenizer.write_files(os.path.join(staging, TOKENIZER_DIR))
    manifest = _manifest(state)
    _write_json(os.path.join(staging, MANIFEST), manifest)
    os.remove(os.path.join(staging, _STATE))
    return manifest


def _manifest(state: dict) -> dict:
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


def _resume_state(staging, settings, sources) -> dict | None:
    path = os.path.join(staging, _STATE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    same = state.get("settings") == settings and [
        {k: s[k] for k in ("path", "size", "mtime_ns", "sha256")}
        for s in state.get("sources", [])
    ] == [
        {k: s[k] for k in ("path", "size", "mtime_ns", "sha256")}
        for s in sources
    ]
    if not same:
        return None
    # Shards past the last recorded one were half-written: remove them.
    known = {s["file"] for s in state["shards"]}
    for entry in os.listdir(staging):
        if entry.endswith(SHARD_SUFFIX) and entry not in known:
            os.remove(os.path.join(staging, entry))
    for shard in state["shards"]:
        size = os.path.getsize(os.path.join(staging, shard["file"]))
        width = np.dtype(settings["dtype"]).itemsize
        if size != shard["tokens"] * width:
            return None
    return state


def _publish(staging: str, target: str) -> None:
    """Moves the finished staging folder to `target`, replacing old
    prepared data in one step."""
    parent, name = os.path.split(target)
    with atomic.staged(parent, name) as temp:
        for entry in os.listdir(staging):
            os.rename(os.path.join(staging, entry), os.path.join(temp, entry))
        atomic.publish(temp, target, replace=True)
    os.rmdir(staging)
