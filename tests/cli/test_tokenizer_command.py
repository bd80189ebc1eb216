import json
import os
import random

import pytest

from tflm import cli
from tflm import tokenizers


@pytest.fixture
def text_file(tmp_path):
    rng = random.Random(0)
    letters = "abcdefghijklmnop红楼梦🙂"
    words = ["".join(rng.choices(letters, k=5)) for _ in range(200)]
    lines = [" ".join(rng.choices(words, k=8)) for _ in range(300)]
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    return str(data / "corpus.txt")


def _train(text_file, out, *extra):
    argv = [
        "tokenizer",
        "train",
        "--data",
        text_file,
        "--vocabulary-size",
        "300",
    ]
    return cli.main(argv + ["--out", str(out), *extra])


def test_tokenizer_train_writes_a_directory_and_reports(
    text_file, tmp_path, capsys
):
    out = tmp_path / "tok"
    assert _train(text_file, out, "--model-type", "unigram") == 0
    printed = capsys.readouterr().out
    assert "vocabulary size: 300" in printed
    assert "characters per token:" in printed
    assert f"written to: {out}" in printed
    assert sorted(os.listdir(out)) == ["sentencepiece.model", "tokenizer.json"]
    assert tokenizers.load_tokenizer(out).vocabulary_size == 300
    assert os.listdir(os.path.dirname(text_file)) == ["corpus.txt"]
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert leftovers == []


def test_tokenizer_train_replaces_a_tokenizer_only_with_overwrite(
    text_file, tmp_path, capsys
):
    out = tmp_path / "tok"
    tokenizers.ByteTokenizer().save(out)
    (out / "NOTES.md").write_text("mine")
    assert _train(text_file, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert isinstance(tokenizers.load_tokenizer(out), tokenizers.ByteTokenizer)
    assert _train(text_file, out, "--overwrite") == 0
    assert isinstance(
        tokenizers.load_tokenizer(out), tokenizers.SentencePieceTokenizer
    )
    assert (out / "NOTES.md").read_text() == "mine"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_tokenizer_train_refuses_a_folder_with_other_files(
    text_file, tmp_path, capsys
):
    (tmp_path / "keep.txt").write_text("mine")
    assert _train(text_file, tmp_path) == 2
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(tmp_path) != []
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "data, size, message",
    [
        ("missing*.txt", "300", "matches no file"),
        (None, "100000", "smaller --vocabulary-size"),
        (None, "280", "needs at least"),
        (None, "280", "larger --vocabulary-size"),
    ],
)
def test_tokenizer_train_errors(
    text_file, tmp_path, capsys, data, size, message
):
    data = str(tmp_path / data) if data else text_file
    argv = ["tokenizer", "train", "--data", data, "--vocabulary-size", size]
    assert cli.main(argv + ["--out", str(tmp_path / "tok")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()


def test_tokenizer_train_reads_jsonl(text_file, tmp_path, capsys):
    lines = open(text_file, encoding="utf-8").read().split("\n")
    path = tmp_path / "data" / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"body": t}) for t in lines))
    argv = [
        "tokenizer",
        "train",
        "--data",
        str(path),
        "--vocabulary-size",
        "300",
    ]
    argv += ["--jsonl-field", "body", "--out", str(tmp_path / "tok")]
    assert cli.main(argv) == 0
    assert "vocabulary size: 300" in capsys.readouterr().out
