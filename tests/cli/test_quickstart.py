"""`tflm quickstart --data` on the user's own text: a vocabulary that fits
its characters, and sample prompts taken from its held-out part."""

import random

import pytest

from tflm import errors
from tflm import quickstart
from tflm.data import tokenizer_corpus


def _chinese(path, characters=1200, lines=1500, seed=0):
    """Lines of 30 CJK characters with Zipf-like frequencies, as in real
    Chinese text: most characters are rare, yet need a piece each."""
    rng = random.Random(seed)
    alphabet = [chr(0x4E00 + i) for i in range(characters)]
    weights = [1 / (rank + 1) for rank in range(characters)]
    text = "\n".join(
        "".join(rng.choices(alphabet, weights, k=30)) for _ in range(lines)
    )
    path.write_text(text + "\n", encoding="utf-8")
    return str(path)


def _held_out_lines(path):
    """The whole lines of the last tenth of a one-document corpus, which
    `tflm train` holds out."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text[len(text) - len(text) // 10 :].split("\n")[1:]


@pytest.fixture(scope="module")
def chinese(tmp_path_factory):
    return _chinese(tmp_path_factory.mktemp("zh") / "novel.txt")


def test_the_vocabulary_grows_with_the_characters_of_chinese_text(chinese):
    size, characters = quickstart.vocabulary_size_for([chinese])
    assert characters > 1000
    assert size > quickstart.FIXED_PIECES + characters and size % 256 == 0
    tokenizer = tokenizer_corpus.train_sentencepiece(
        [chinese], vocabulary_size=size
    )
    assert tokenizer.vocabulary_size == size
    # The old fixed default does not fit, and the error names the flag.
    with pytest.raises(errors.InputError, match="larger --vocabulary-size"):
        tokenizer_corpus.train_sentencepiece([chinese], vocabulary_size=1024)


def test_english_text_keeps_the_smallest_vocabulary(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("the cat sat on the mat. " * 2000, encoding="utf-8")
    assert quickstart.vocabulary_size_for([str(path)]) == (1024, 11)


def test_the_vocabulary_size_refuses_text_that_is_not_utf8(tmp_path):
    # A latin-1 corpus was sized through U+FFFD; training refuses it, so
    # sizing refuses it too, naming the file, the line and the byte.
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(errors.InputError, match="not UTF-8") as err:
        quickstart.vocabulary_size_for([str(path)])
    assert str(err.value).startswith(f"{path}:2: not UTF-8")


def test_prompts_are_openings_of_held_out_lines(chinese):
    lines = _held_out_lines(chinese)
    prompts = quickstart.corpus_prompts([chinese])
    assert len(prompts) == 3 and len(set(prompts)) == 3
    for prompt in prompts:
        assert len(prompt) == 4
        assert any(line.startswith(prompt) for line in lines), prompt
    assert quickstart.corpus_prompts([chinese]) == prompts


def test_prompts_of_english_text_are_the_first_words(tmp_path):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]
    lines = [" ".join(rng.choices(words, k=6)) for _ in range(100)]
    path = tmp_path / "book.txt"
    path.write_text("\n".join(["Title", *lines]), encoding="utf-8")
    prompts = quickstart.corpus_prompts([str(path)])
    assert len(prompts) == 3
    held_out = _held_out_lines(path)
    for prompt in prompts:
        assert len(prompt.split()) == 3
        assert any(line.startswith(prompt) for line in held_out), prompt
