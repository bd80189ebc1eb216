"""`tflm.data.prepare`: token shards equal the in-memory token stream,
survive a kill, skip unchanged corpora and refuse bad input."""

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import prepare_helpers as helpers
import pytest

from tflm import data
from tflm import errors
from tflm import tokenizers
from tflm.data import blocks
from tflm.data import prepared
from tflm.data import shards

BYTE = tokenizers.ByteTokenizer()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return helpers.write_mixed_corpus(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def tokenizer_by_name(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizers")
    sample = folder / "sample.txt"
    sample.write_text(helpers.mixed_text(300, seed=0), encoding="utf-8")
    return {
        "byte": BYTE,
        "sentencepiece": tokenizers.SentencePieceTokenizer.train(
            [str(sample)], vocabulary_size=400
        ),
        "gpt2": helpers.gpt2_tokenizer(folder / "gpt2"),
        "gpt2_wide": helpers.gpt2_tokenizer(folder / "wide", id_offset=70_000),
    }


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 300)


def _prepare(paths, out, tokenizer=BYTE, **kwargs):
    kwargs = (
        dict(validation_fraction=0, shard_tokens=500, progress=False) | kwargs
    )
    return data.prepare(paths, tokenizer, out, **kwargs)


# Paragraph and line cuts do not depend on the tokenizer; document cuts do
# (at every newline for the byte tokenizer and this SentencePiece, only at a
# newline between text for byte-level BPE).
CASES = [
    ("byte", "document"),
    ("byte", "paragraph"),
    ("byte", "line"),
    ("sentencepiece", "document"),
    ("sentencepiece", "line"),
    ("gpt2", "document"),
    ("gpt2_wide", "paragraph"),  # ids above 65,536: int32 shards
]


@pytest.mark.parametrize("name, text_format", CASES)
def test_shards_hold_the_ids_of_the_token_stream(
    mixed, tokenizer_by_name, tmp_path, small_blocks, name, text_format
):
    tokenizer = tokenizer_by_name[name]
    out = tmp_path / "out"
    manifest = _prepare(mixed, out, tokenizer, text_format=text_format)
    expected = helpers.stream_ids(
        mixed, tokenizer, str(tmp_path / "cache"), text_format=text_format
    )
    got = helpers.shard_ids(out)
    np.testing.assert_array_equal(got, expected)
    assert manifest["tokens"] == expected.size
    wide = tokenizer.vocabulary_size > 1 << 16
    assert manifest["settings"]["dtype"] == ("int32" if wide else "uint16")
    assert got.max() >= 70_000 if wide else got.max() < 1 << 16
    # Many blocks and shards, each full but the last.
    sizes = [s["tokens"] for s in manifest["shards"]]
    assert len(sizes) > 5 and set(sizes[:-1]) == {500} and sizes[-1] <= 500
    assert sorted(os.listdir(out)) == sorted(
        [s["file"] for s in manifest["shards"]]
        + [shards.MANIFEST, shards.TOKENIZER_DIR]
    )


def test_a_text_with_nowhere_to_cut_is_read_whole_with_a_warning(
    tokenizer_by_name, tmp_path, small_blocks, monkeypatch, caplog
):
    # Windows line ends: every newline touches other whitespace, so a
    # byte-level BPE document has no place to cut.
    monkeypatch.setattr(blocks, "_WHOLE_WARNING_BYTES", 2_000)
    crlf = tmp_path / "crlf.txt"
    text = helpers.mixed_text(200, seed=3).replace("\n", "\r\n")
    crlf.write_bytes(text.encode("utf-8"))
    tokenizer = tokenizer_by_name["gpt2"]
    with caplog.at_level("WARNING", logger=blocks.__name__):
        _prepare(str(crlf), tmp_path / "out", tokenizer)
    said = [r.getMessage() for r in caplog.records]
    assert any(str(crlf) in m and "dos2unix" in m for m in said), said
    expected = helpers.stream_ids(str(crlf), tokenizer, str(tmp_path / "c"))
    np.testing.assert_array_equal(helpers.shard_ids(tmp_path / "out"), expected)


def test_a_blank_file_larger_than_a_block_is_no_document(
    tmp_path, small_blocks
):
    (tmp_path / "blank.txt").write_text(" \n\t\n" * 500, encoding="utf-8")
    (tmp_path / "text.txt").write_text("a line\n", encoding="utf-8")
    _prepare(str(tmp_path), tmp_path / "out")
    expected = helpers.stream_ids(str(tmp_path), BYTE, str(tmp_path / "c"))
    got = helpers.shard_ids(tmp_path / "out")
    np.testing.assert_array_equal(got, expected)
    assert got.size == len("a line\n") + 1


def test_a_source_inside_out_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    book = out / "book.txt"
    book.write_text("a line\n", encoding="utf-8")
    with pytest.raises(errors.InputError, match="lies inside --out"):
        _prepare(str(book), out, overwrite=True)
    assert book.read_text(encoding="utf-8") == "a line\n"


def test_an_unreadable_manifest_is_prepared_again(tmp_path, caplog):
    (tmp_path / "book.txt").write_text("a line\n" * 50, encoding="utf-8")
    out = tmp_path / "out"
    first = _prepare(str(tmp_path / "book.txt"), out)
    (out / shards.MANIFEST).write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tflm.data.shards"):
        again = _prepare(str(tmp_path / "book.txt"), out)
    assert "Preparing it again" in caplog.text
    assert again == first == prepared.load(out, BYTE).manifest


def test_validation_shards_are_spread_evenly(tmp_path):
    corpus = tmp_path / "book.txt"
    corpus.write_text(helpers.mixed_text(400, seed=5), encoding="utf-8")
    manifest = _prepare(
        str(corpus), tmp_path / "out", validation_fraction=0.1, shard_tokens=400
    )
    count = len(manifest["shards"])
    assert 25 <= count <= 40
    split = {s["file"]: s["split"] for s in manifest["shards"]}
    expected = [
        shards.shard_name(i)
        for i in range(count)
        if shards.is_validation_shard(i, 0.1)
    ]
    validation = manifest["splits"]["validation"]["shards"]
    train = manifest["splits"]["train"]["shards"]
    assert validation == expected == [f for f in split if split[f] != "train"]
    assert [shards.shard_name(i) for i in (9, 19)] == validation[:2]
    assert train and validation and not set(train) & set(validation)
    assert sorted(train + validation) == sorted(split)
    tokens = {s["file"]: s["tokens"] for s in manifest["shards"]}
    for side in ("train", "validation"):
        names = manifest["splits"][side]["shards"]
        assert manifest["splits"][side]["tokens"] == sum(
            tokens[n] for n in names
        )


KILLED = textwrap.dedent(
    """
    import sys
    from tflm import tokenizers
    from tflm.data import blocks
    from tflm.data import shards

    blocks.BLOCK_BYTES = 1 << 20
    shards.prepare(
        sys.argv[1], tokenizers.ByteTokenizer(), sys.argv[2],
        validation_fraction=0.1, shard_tokens=1 << 15, progress=False,
    )
    """
)


def _recorded_shards(staging) -> list:
    """The shards the staging folder's log records as finished."""
    try:
        with open(os.path.join(staging, "shards.jsonl")) as f:
            lines = f.read().split("\n")[:-1]  # The last may be cut.
    except OSError:
        return []
    return [json.loads(line) for line in lines]


def test_a_killed_prepare_continues_to_the_same_shards(
    tmp_path, caplog, monkeypatch
):
    corpus = tmp_path / "corpus.txt"
    helpers.write_repeated(corpus, megabytes=6)
    out = tmp_path / "out"
    staging = tmp_path / ".out.tflm-preparing"
    with open(tmp_path / "child.log", "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED, str(corpus), str(out)],
            env=helpers.child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while not _recorded_shards(staging) and child.poll() is None:
        assert time.monotonic() < deadline, "no shard in 120 s"
        time.sleep(0.005)
    assert child.poll() is None, (tmp_path / "child.log").read_text()
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert not out.exists()  # nothing half-written is visible
    done = _recorded_shards(staging)
    assert 1 <= len(done) < 150
    kept = {
        name: stat
        for name, stat in helpers.shard_stats(staging).items()
        if name in {s["file"] for s in done}
    }
    # The rerun reads smaller blocks: where it continues is a byte offset
    # and the ids of the stream from there already in shards, which span
    # several of its blocks.
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 1 << 14)
    with caplog.at_level(logging.INFO, logger="tflm.data.shards"):
        resumed = data.prepare(
            str(corpus), BYTE, str(out), validation_fraction=0.1,
            shard_tokens=1 << 15, progress=False,
        )  # fmt: skip
    continued = f"Continuing an interrupted preparation from shard {len(done)}"
    assert continued in caplog.text
    # The shards written before the kill were moved, not written again.
    stats = helpers.shard_stats(out)
    assert {name: stats[name] for name in kept} == kept
    assert not staging.exists()
    fresh = data.prepare(
        str(corpus), BYTE, str(tmp_path / "fresh"), validation_fraction=0.1,
        shard_tokens=1 << 15, progress=False,
    )  # fmt: skip
    assert resumed == fresh and len(fresh["shards"]) > 150
    assert helpers.folder_files(out) == helpers.folder_files(tmp_path / "fresh")


def test_an_unchanged_corpus_is_not_tokenized_again(tmp_path, caplog):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    book = corpus / "book.txt"
    book.write_text(helpers.mixed_text(100, seed=7), encoding="utf-8")
    (corpus / "more.txt").write_text("红楼梦 🙂\n", encoding="utf-8")
    out = tmp_path / "out"
    first = _prepare(str(corpus), out, shard_tokens=300)
    files = helpers.shard_stats(out)
    manifest_stat = os.stat(out / shards.MANIFEST).st_mtime_ns
    os.utime(book)  # a newer time, the same text
    for _ in range(2):
        with caplog.at_level(logging.INFO, logger="tflm.data.shards"):
            again = _prepare(str(corpus), out, shard_tokens=300)
        assert again == first
        assert (
            "is up to date" in caplog.text and "Continuing" not in caplog.text
        )
        assert helpers.shard_stats(out) == files
        assert os.stat(out / shards.MANIFEST).st_mtime_ns == manifest_stat
        prepared.load(out, BYTE)
        caplog.clear()
    added = "\n\nA new paragraph, 新的一段。\n"
    with open(book, "a", encoding="utf-8") as f:
        f.write(added)
    with pytest.raises(errors.InputError) as raised:
        prepared.load(out, BYTE)
    assert str(book) in str(raised.value)
    assert "Run `tflm data prepare` again" in str(raised.value)
    with caplog.at_level(logging.INFO, logger="tflm.data.shards"):
        changed = _prepare(str(corpus), out, shard_tokens=300)
    assert "preparing it again" in caplog.text
    assert changed["tokens"] == first["tokens"] + len(added.encode())
    np.testing.assert_array_equal(
        helpers.shard_ids(out),
        helpers.stream_ids(str(corpus), BYTE, str(tmp_path / "cache")),
    )
    assert prepared.load(out, BYTE).manifest == changed
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".")]


def test_shards_of_another_tokenizer_are_refused(tmp_path, tokenizer_by_name):
    corpus = tmp_path / "book.txt"
    corpus.write_text(helpers.mixed_text(60, seed=8), encoding="utf-8")
    out = tmp_path / "out"
    _prepare(str(corpus), out)
    assert prepared.load(out, tokenizers.ByteTokenizer()).manifest["tokens"]
    for name in ("sentencepiece", "gpt2"):
        with pytest.raises(errors.InputError, match="another tokenizer"):
            prepared.load(out, tokenizer_by_name[name])
    # Shards of another tokenizer at the target are prepared again.
    gpt2 = tokenizer_by_name["gpt2"]
    manifest = _prepare(str(corpus), out, gpt2)
    assert prepared.load(out, gpt2).manifest == manifest
    np.testing.assert_array_equal(
        helpers.shard_ids(out),
        helpers.stream_ids(str(corpus), gpt2, str(tmp_path / "cache")),
    )


def test_a_truncated_or_missing_shard_is_named(tmp_path):
    corpus = tmp_path / "book.txt"
    corpus.write_text(helpers.mixed_text(60, seed=9), encoding="utf-8")
    out = tmp_path / "out"
    manifest = _prepare(str(corpus), out, shard_tokens=200)
    shard = out / manifest["shards"][2]["file"]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 2)
    with pytest.raises(errors.InputError) as raised:
        prepared.load(out)
    assert f"{shard} is truncated" in str(raised.value)
    assert "tflm data prepare" in str(raised.value)
    shard.unlink()
    with pytest.raises(errors.InputError, match=f"{shard} is missing"):
        prepared.load(out)


def test_an_out_folder_of_other_files_needs_overwrite_and_keeps_them(
    tmp_path,
):
    corpus = tmp_path / "book.txt"
    corpus.write_text(helpers.mixed_text(30, seed=10), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(errors.InputError, match="--overwrite"):
        _prepare(str(corpus), out)
    assert os.listdir(out) == ["notes.txt"]
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".")]
    manifest = _prepare(str(corpus), out, overwrite=True)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert prepared.load(out, BYTE).manifest == manifest


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, small_blocks):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("fine\n", encoding="utf-8")
    (corpus / "bad.txt").write_bytes(b"one\ntwo \xe9t\xe9\nthree\n")
    with pytest.raises(errors.InputError) as raised:
        _prepare(str(corpus), tmp_path / "out")
    message = str(raised.value)
    assert message.startswith(f"{corpus / 'bad.txt'}:2: not UTF-8")
    assert "byte offset 8" in message
    (corpus / "bad.txt").unlink()
    records = "".join(f'{{"text": "record {i}"}}\n' for i in range(200))
    (corpus / "bad.jsonl").write_bytes(
        records.encode() + b'{"text": "caf\xe9"}\n'
    )
    with pytest.raises(errors.InputError) as raised:
        _prepare(str(corpus), tmp_path / "out")
    message = str(raised.value)
    offset = len(records.encode()) + len('{"text": "caf')
    assert message.startswith(f"{corpus / 'bad.jsonl'}:201: not UTF-8")
    assert f"byte offset {offset}" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"text": "unterminated', "not valid JSON"),
        ('{"body": "no text field"}', "no 'text' field"),
        ('["a list"]', "a JSON list, not an object"),
    ],
)
def test_a_bad_jsonl_line_is_named(tmp_path, small_blocks, line, problem):
    records = [json.dumps({"text": f"record {i} 🙂 红"}) for i in range(80)]
    records[56] = line
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(records) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(errors.InputError) as raised:
        _prepare(str(path), out, shard_tokens=100)
    assert str(raised.value).startswith(f"{path}:57: {problem}")
    assert not out.exists()
    # Fixed, the file prepares (over what the failed run left).
    records[56] = json.dumps({"text": "fixed"})
    path.write_text("\n".join(records) + "\n", encoding="utf-8")
    _prepare(str(path), out, shard_tokens=100)
    np.testing.assert_array_equal(
        helpers.shard_ids(out),
        helpers.stream_ids(str(path), BYTE, str(tmp_path / "cache")),
    )


# Runs in its own mount namespace (`unshare`): a small tmpfs is the full
# disk, and it goes away with the namespace.
FULL_DISK = textwrap.dedent(
    """
    import hashlib, json, os, subprocess, sys

    spec = json.loads(sys.argv[1])
    disk = spec["disk"]
    options = f"size={spec['size'] // 1024}k"
    mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", disk]
    if subprocess.run(mount, capture_output=True).returncode:
        sys.exit(77)

    from tflm import errors, tokenizers
    from tflm.data import prepared, shards

    out = os.path.join(disk, "out")
    settings = dict(validation_fraction=0, shard_tokens=4096, progress=False)
    byte = tokenizers.ByteTokenizer()
    shards.prepare(spec["small"], byte, out, **settings)
    result = {}
    try:
        shards.prepare(spec["big"], byte, out, **settings)
    except errors.InputError as err:
        result["error"] = str(err)
    result["kept"] = prepared.load(out, byte).manifest
    result["files"] = {}
    for name in os.listdir(out):
        if os.path.isfile(os.path.join(out, name)):
            with open(os.path.join(out, name), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            result["files"][name] = digest
    result["entries"] = sorted(os.listdir(disk))
    with open(spec["result"], "w") as f:
        json.dump(result, f)
    """
)


def test_a_full_disk_keeps_the_prepared_folder(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small file system")
    disk, result = tmp_path / "disk", tmp_path / "result.json"
    disk.mkdir()
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text(helpers.mixed_text(200, seed=11), encoding="utf-8")
    helpers.write_repeated(big, megabytes=1)  # 2 MB of shards
    spec = {
        "disk": str(disk),
        "result": str(result),
        "size": 512 * 1024,
        "small": str(small),
        "big": str(big),
    }
    process = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount"]
        + [sys.executable, "-c", FULL_DISK, json.dumps(spec)],
        env=helpers.child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if process.returncode == 77 or "unshare:" in process.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {process.stderr.strip()}")
    assert process.returncode == 0, process.stderr[-3000:]
    with open(result) as f:
        result = json.load(f)
    message = result["error"]
    assert message.startswith(f"No space left on {disk}: the write ran out ")
    assert float(re.search(r"ran out after ([0-9.]+) MB", message)[1]) > 0
    assert "the partial files were removed" in message
    # The folder prepared before is whole: the same as a fresh one.
    fresh = tmp_path / "fresh"
    manifest = _prepare(str(small), fresh, shard_tokens=4096)
    assert result["kept"] == manifest
    expected = {
        name: hashlib.sha256(content).hexdigest()
        for name, content in helpers.folder_files(fresh).items()
        if os.sep not in name
    }
    assert result["files"] == expected
    assert result["entries"] == ["out"]


PEAK_MEMORY = textwrap.dedent(
    """
    import resource, sys
    from tflm import tokenizers
    from tflm.data import shards

    shards.prepare(
        sys.argv[1], tokenizers.ByteTokenizer(), sys.argv[2], progress=False
    )
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    peak = {}
    for megabytes in (20, 80):
        corpus = tmp_path / f"corpus{megabytes}.txt"
        helpers.write_repeated(corpus, megabytes=megabytes)
        out = tmp_path / f"out{megabytes}"
        peak[megabytes] = int(helpers.run_child(PEAK_MEMORY, corpus, out))
        with open(out / shards.MANIFEST) as f:
            assert json.load(f)["tokens"] > megabytes * 1e6
        corpus.unlink()
        shutil.rmtree(out)
    # Measured on 2 cores (peak RSS, most of it TensorFlow): 783 to 811 MB
    # for 20 MB, 810 MB for 80 MB (growth -1 to 27 MB). With the file read
    # as one block (BLOCK_BYTES = 1 GB): 1,099 and 2,236 MB.
    assert peak[80] - peak[20] < 60, peak
