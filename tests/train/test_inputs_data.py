"""`tflm train` and `tflm eval` on corpora that used to fail: one book, a
model directory inside the data folder, a broken `.jsonl` line."""

import json
import math

import pytest
import shared_data
import train_helpers

from tflm import errors
from tflm.train import config as config_lib
from tflm.train import evaluate
from tflm.train import fit
from tflm.train import inputs

BOOK = "".join(
    f"Chapter {i}. It was the best of times, it was the worst of times.\n"
    for i in range(40)
)
CHINESE = "".join(
    f"第{i}回 甄士隐梦幻识通灵，贾雨村风尘怀闺秀。\n" for i in range(80)
)


def _config(data, out, **overrides):
    """Default data settings (one document per file), a short run."""
    kwargs = train_helpers.tiny_config(data, out, **overrides)
    del kwargs["text_format"]
    return config_lib.TrainConfig(**kwargs)


def test_one_file_trains_and_validates_with_defaults(tmp_path):
    """The old failure: "the 'validation' split of book.txt has 0
    window(s)". (Chinese text: `tests/data/test_split.py` and below.)"""
    text = BOOK
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    config = _config(str(path), tmp_path / "m", steps=2, validate_every=0)
    result = fit.train(config, verbose=0)
    assert result.step == 2
    assert math.isfinite(result.validation_loss)
    # `tflm eval --split validation` scores the same held-out text.
    scores = evaluate.evaluate(
        result.directory,
        str(path),
        split="validation",
        batch_size=config.batch_size,
        strategy="default",
    )
    assert scores["loss"] == pytest.approx(result.validation_loss, rel=1e-5)
    assert scores["characters"] == math.floor(len(text) * 0.1)


def test_one_long_jsonl_record_and_a_few_files_train(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "book.jsonl").write_text(json.dumps({"text": CHINESE}) + "\n")
    (folder / "a.txt").write_text(BOOK)
    (folder / "b.txt").write_text(BOOK.upper())
    config = _config(str(folder), tmp_path / "m", steps=2)
    assert math.isfinite(fit.train(config, verbose=0).validation_loss)


def test_out_inside_data_is_not_read_when_resuming(tmp_path):
    """The old failure: the rerun read `logs/metrics.jsonl` of its own
    model directory as training text."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "book.txt").write_text(BOOK)
    out = folder / "model"
    settings = dict(validation_fraction=0.0)
    first = fit.train(_config(str(folder), out, steps=2, **settings), verbose=0)
    assert (out / "logs" / "metrics.jsonl").is_file()
    again = fit.train(_config(str(folder), out, steps=4, **settings), verbose=0)
    assert (first.step, again.start_step, again.step) == (2, 2, 4)


def test_broken_jsonl_line_for_sentencepiece_names_file_and_line(tmp_path):
    """The old failure: `INTERNAL: ValueError...` from SentencePiece."""
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"line {i} of the text"}) for i in range(50)]
    lines[41] = '{"text": "cut off'
    path.write_text("\n".join(lines) + "\n")
    config = _config(str(path), tmp_path / "m", tokenizer="sentencepiece:300")
    with pytest.raises(errors.InputError) as caught:
        inputs.make_tokenizer(config)
    assert str(caught.value).startswith(f"{path}:42: not valid JSON")
    assert "INTERNAL" not in str(caught.value)


def test_a_corpus_too_small_for_one_batch_says_so(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("too short")
    config = _config(str(path), tmp_path / "m")
    with pytest.raises(errors.InputError) as caught:
        fit.train(config, verbose=0)
    message = str(caught.value)
    # 9 bytes + end-of-text (a tenth of 9 characters holds out none).
    assert "'train' split of" in message and "has 10 token(s)" in message
    assert "needs 8 window(s) of sequence_length + 1 = 17 tokens" in message
    assert "Add text" in message
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_tiny_shakespeare_trains_with_defaults(tmp_path):
    path = shared_data.shared_data_path("tinyshakespeare.txt")
    config = _config(path, tmp_path / "m", steps=1, eval_batches=2)
    assert math.isfinite(fit.train(config, verbose=0).validation_loss)
