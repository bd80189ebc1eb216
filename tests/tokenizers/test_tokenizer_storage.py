"""Saving tokenizers crash-safely, and clear errors for damaged files."""

import json
import os

import gpt2_files
import pytest

from tflm import errors
from tflm import tokenizers
from tflm.tokenizers import gpt2_bpe


@pytest.fixture(scope="module")
def sentencepiece():
    lines = [f"the king {i} and the queen {i % 7}\n" for i in range(200)]
    return tokenizers.SentencePieceTokenizer.train(
        texts=lines, vocabulary_size=300
    )


@pytest.fixture
def saved(sentencepiece, tmp_path):
    return tokenizers.save(sentencepiece, tmp_path / "tok")


def test_save_refuses_to_replace_without_overwrite(saved, sentencepiece):
    notes = os.path.join(saved, "NOTES.md")
    with open(notes, "w") as f:
        f.write("mine")
    with pytest.raises(errors.InputError, match="--overwrite"):
        tokenizers.save(tokenizers.ByteTokenizer(), saved)
    assert tokenizers.load_tokenizer(saved).vocabulary_size == 300
    tokenizers.ByteTokenizer().save(saved, overwrite=True)
    # The old type's model file went with it; the user's notes stayed.
    assert sorted(os.listdir(saved)) == ["NOTES.md", "tokenizer.json"]
    assert isinstance(
        tokenizers.load_tokenizer(saved), tokenizers.ByteTokenizer
    )
    hidden = [n for n in os.listdir(os.path.dirname(saved)) if n[0] == "."]
    assert hidden == []


def test_save_refuses_folders_that_hold_something_else(tmp_path):
    (tmp_path / "NOTES.md").write_text("mine")
    with pytest.raises(errors.InputError, match="holds no tokenizer"):
        tokenizers.save(tokenizers.ByteTokenizer(), tmp_path, overwrite=True)
    assert os.listdir(tmp_path) == ["NOTES.md"]


def test_save_refuses_a_models_tokenizer_without_overwrite(tmp_path):
    from tflm.models import CausalLM
    from tflm.models import model_dir

    model = CausalLM.from_preset("tiny", vocabulary_size=259)
    model_dir.save(model, tokenizers.ByteTokenizer(), tmp_path / "m")
    with pytest.raises(errors.InputError, match="--overwrite"):
        tokenizers.save(tokenizers.ByteTokenizer(), tmp_path / "m/tokenizer")


def test_save_follows_a_symlink(sentencepiece, saved, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(saved)
    assert tokenizers.save(sentencepiece, link, overwrite=True) == saved
    assert link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(errors.InputError, match="symbolic link"):
        tokenizers.save(sentencepiece, dangling)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a model", "is not a SentencePiece model"),
        (b"", "is not a SentencePiece model"),
    ],
)
def test_corrupt_sentencepiece_model_is_named(saved, content, message):
    path = os.path.join(saved, "sentencepiece.model")
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(errors.InputError, match=message) as info:
        tokenizers.load_tokenizer(saved)
    assert path in str(info.value)


def test_truncated_sentencepiece_model_is_named(saved):
    path = os.path.join(saved, "sentencepiece.model")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(errors.InputError, match="sentencepiece.model"):
        tokenizers.load_tokenizer(saved)


def test_corrupt_tokenizer_json_is_named(saved):
    path = os.path.join(saved, "tokenizer.json")
    for content in ("{", "[1, 2]", "\udcff"):
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(content)
        with pytest.raises(errors.InputError, match="tokenizer.json"):
            tokenizers.load_tokenizer(saved)


def _point(directory, key, name):
    path = os.path.join(directory, "tokenizer.json")
    with open(path) as f:
        config = json.load(f)
    config[key] = name
    with open(path, "w") as f:
        json.dump(config, f)


def test_files_outside_the_folder_are_refused(saved, tmp_path):
    outside = tmp_path / "secret.model"
    os.rename(os.path.join(saved, "sentencepiece.model"), outside)
    for name in (str(outside), "../secret.model"):
        _point(saved, "model_file", name)
        with pytest.raises(errors.InputError, match="points outside"):
            tokenizers.load_tokenizer(saved)
    os.symlink(outside, os.path.join(saved, "link.model"))
    _point(saved, "model_file", "link.model")
    with pytest.raises(errors.InputError, match="points outside"):
        tokenizers.load_tokenizer(saved)
    _point(saved, "model_file", "missing.model")
    with pytest.raises(errors.InputError, match="missing.model is missing"):
        tokenizers.load_tokenizer(saved)


@pytest.fixture
def gpt2_dir(tmp_path):
    vocab, merges = gpt2_files.train_bpe(num_merges=5)
    directory = tmp_path / "gpt2"
    gpt2_bpe.GPT2BPETokenizer(vocab, merges).save(directory)
    return directory


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("vocab.json", b"{", "vocab.json is corrupt"),
        ("vocab.json", b"\xff\xfe", "vocab.json is corrupt"),
        ("vocab.json", b"[1, 2]", "not a JSON map"),
        ("merges.txt", b"\xff\n", "merges.txt is corrupt"),
        ("merges.txt", b"#version: 0.2\nq z\n", "merge 1"),
    ],
)
def test_corrupt_gpt2_files_are_named(gpt2_dir, name, content, message):
    (gpt2_dir / name).write_bytes(content)
    with pytest.raises(errors.InputError, match=message):
        tokenizers.load_tokenizer(gpt2_dir)


def test_gpt2_files_outside_the_folder_are_refused(gpt2_dir):
    _point(gpt2_dir, "merges_file", "/etc/passwd")
    with pytest.raises(errors.InputError, match="points outside"):
        tokenizers.load_tokenizer(gpt2_dir)
