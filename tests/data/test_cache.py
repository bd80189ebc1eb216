import json
import logging
import os
import stat
import tempfile

import pytest
import tensorflow as tf

from tflm import data
from tflm import errors
from tflm.data import cache
from tflm.data import jsonl


def _docs(files, cache_dir=None):
    dataset = data.read_documents(files, cache_dir=cache_dir)
    return [doc.decode("utf-8") for doc in dataset.as_numpy_iterator()]


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "real one"}\n{"text": "real two"}\n')
    return str(path)


def test_default_is_per_user_not_the_shared_temp_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TFLM_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_cache_dir() == str(tmp_path / "home/.cache/tflm")
    shared = os.path.join(tempfile.gettempdir(), "tflm-cache")
    assert cache.default_cache_dir() != shared
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == str(tmp_path / "xdg" / "tflm")
    monkeypatch.setenv("TFLM_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.default_cache_dir() == str(tmp_path / "mine")


def test_cache_folders_are_created_private(monkeypatch, tmp_path, records):
    monkeypatch.delenv("TFLM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _docs([records]) == ["real one", "real two"]
    for folder in (tmp_path / "xdg" / "tflm", tmp_path / "xdg/tflm/jsonl"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o775, 0o777, 0o1777])
def test_a_cache_others_may_write_is_refused(tmp_path, records, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    with pytest.raises(errors.InputError, match="may be written by other"):
        _docs([records], cache_dir=str(shared))
    assert os.listdir(shared) == []


def test_a_cache_of_another_user_is_refused(tmp_path, records):
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(other, 65534, 65534)
    else:
        other = "/"  # root's: another user's folder for anyone else
    with pytest.raises(errors.InputError, match="belongs to another user"):
        _docs([records], cache_dir=str(other))


def _plant(records_path, texts):
    with tf.io.TFRecordWriter(records_path) as writer:
        for text in texts:
            writer.write(text.encode())


def test_a_planted_cache_file_is_not_used(tmp_path, records, caplog):
    """The old failure: a file planted under the cache key was read as the
    corpus. Now what is read back must match the recorded digests."""
    cache_dir = str(tmp_path / "cache")
    assert _docs([records], cache_dir) == ["real one", "real two"]
    folder = os.path.join(cache_dir, "jsonl")
    (planted,) = [f for f in os.listdir(folder) if f.endswith(".tfrecord")]
    _plant(os.path.join(folder, planted), ["PLANTED"])
    with caplog.at_level(logging.WARNING):
        assert _docs([records], cache_dir) == ["real one", "real two"]
    assert "does not match its source" in caplog.text


def test_a_meta_file_for_other_content_is_not_used(tmp_path, records):
    cache_dir = str(tmp_path / "cache")
    _docs([records], cache_dir)
    folder = os.path.join(cache_dir, "jsonl")
    (meta,) = [f for f in os.listdir(folder) if f.endswith(".json")]
    with open(os.path.join(folder, meta)) as f:
        content = json.load(f)
    content["source_sha256"] = "0" * 64
    with open(os.path.join(folder, meta), "w") as f:
        json.dump(content, f)
    assert _docs([records], cache_dir) == ["real one", "real two"]


def test_an_edit_that_keeps_size_and_mtime_is_seen(tmp_path, records):
    cache_dir = str(tmp_path / "cache")
    assert _docs([records], cache_dir) == ["real one", "real two"]
    before = os.stat(records)
    with open(records, "w") as f:
        f.write('{"text": "edit one"}\n{"text": "edit two"}\n')
    os.utime(records, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(records).st_size == before.st_size
    assert _docs([records], cache_dir) == ["edit one", "edit two"]


def test_a_valid_entry_is_reused(tmp_path, records):
    cache_dir = str(tmp_path / "cache")
    first = jsonl.cache_jsonl(records, "text", cache_dir)
    written = os.stat(first[0]).st_mtime_ns
    assert jsonl.cache_jsonl(records, "text", cache_dir) == first
    assert os.stat(first[0]).st_mtime_ns == written
    assert first[1] == 2
