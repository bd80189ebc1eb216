import logging
import os

import pytest

from tflm import data
from tflm import errors
from tflm import tokenizers
from tflm.models import causal_lm
from tflm.models import model_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A real tiny model directory, with the logs `tflm train` writes."""
    directory = tmp_path_factory.mktemp("saved") / "model"
    lm = causal_lm.CausalLM.from_preset("tiny", vocabulary_size=260)
    model_dir.save(lm, tokenizers.ByteTokenizer(), directory)
    (directory / "logs").mkdir()
    (directory / "logs" / "metrics.jsonl").write_text('{"step": 1}\n')
    (directory / "notes.txt").write_text("a user's notes on the run\n")
    return directory


def _copy_tree(source, target):
    for root, _, names in os.walk(source):
        folder = os.path.join(target, os.path.relpath(root, source))
        os.makedirs(folder, exist_ok=True)
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                content = f.read()
            with open(os.path.join(folder, name), "wb") as f:
                f.write(content)


@pytest.fixture
def folder(tmp_path, model):
    """A data folder holding text and everything that is not text."""
    root = tmp_path / "data"
    (root / "chapters").mkdir(parents=True)
    (root / "book.txt").write_text("text\n")
    (root / "chapters" / "one.txt").write_text("one\n")
    (root / "chapters" / "two.jsonl").write_text('{"text": "two"}\n')
    _copy_tree(model, root / "run")  # the old failure: --out in --data
    _copy_tree(model, root / "chapters" / "nested-run")
    tokenizers.ByteTokenizer().save(str(root / "tok"))
    (root / "tok" / "vocab.txt").write_text("not a corpus\n")
    export = root / "export" / "1"
    (export / "assets").mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"\x08\x01")
    (export / "assets" / "vocab.txt").write_text("not a corpus\n")
    (root / ".git").mkdir()
    (root / ".git" / "message.txt").write_text("hidden\n")
    (root / ".run.tmp-1234" / "logs").mkdir(parents=True)
    (root / ".run.tmp-1234" / "logs" / "metrics.jsonl").write_text("{}\n")
    (root / ".draft.txt").write_text("hidden\n")
    return root


TEXT = ["book.txt", "chapters/one.txt", "chapters/two.jsonl"]


def _names(found, root):
    return sorted(os.path.relpath(f, root) for f in found)


def test_markers_match_what_tflm_writes(folder):
    assert model_dir.is_model_dir(folder / "run")
    assert data.skip_reason(str(folder / "run")) == "a tflm model directory"
    assert data.skip_reason(str(folder / "tok")) == "a tokenizer directory"
    assert data.skip_reason(str(folder / "export" / "1")) == "a SavedModel"
    assert data.skip_reason(str(folder / ".git")) == "hidden"
    assert data.skip_reason(str(folder / "chapters")) is None


def test_folder_walk_skips_model_dirs_and_hidden_names(folder, caplog):
    with caplog.at_level(logging.DEBUG, logger="tflm.data.files"):
        found = data.find_files(str(folder))
    assert _names(found, folder) == TEXT
    assert f"Not reading {folder / 'run'} as text" in caplog.text
    assert "tflm model directory" in caplog.text
    assert "a SavedModel" in caplog.text


@pytest.mark.parametrize("pattern", ["**/*.txt", "**/*.jsonl", "*/*", "**"])
def test_globs_skip_model_dirs(folder, pattern):
    found = data.find_files(str(folder / pattern))
    assert set(_names(found, folder)) <= set(TEXT)
    assert found


def test_a_file_named_directly_is_read(folder):
    path = str(folder / "run" / "notes.txt")
    assert data.find_files(path) == [path]
    path = str(folder / ".draft.txt")
    assert data.find_files(path) == [path]


def test_exclude_skips_a_folder_before_it_is_a_model(tmp_path):
    root = tmp_path / "data"
    (root / "out" / "logs").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "out" / "logs" / "metrics.jsonl").write_text('{"step": 1}\n')
    everything = data.find_files(str(root))
    assert len(everything) == 2
    found = data.find_files(str(root), exclude=[str(root / "out")])
    assert found == [str(root / "a.txt")]
    found = data.find_files(str(root / "**"), exclude=[str(root / "out")])
    assert found == [str(root / "a.txt")]


def test_a_model_dir_as_data_says_what_it_is(folder):
    with pytest.raises(errors.InputError, match="is a tflm model directory"):
        data.find_files(str(folder / "run"))


def test_a_dataset_with_config_and_train_folders_is_read(tmp_path):
    root = tmp_path / "dataset"
    (root / "train").mkdir(parents=True)
    (root / "config.json").write_text('{"name": "my dataset"}')
    (root / "train" / "part.txt").write_text("text\n")
    assert data.skip_reason(str(root)) is None
    found = data.find_files(str(tmp_path))
    assert found == [str(root / "train" / "part.txt")]
