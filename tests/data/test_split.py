import json
import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from tflm import data
from tflm import errors
from tflm import tokenizers

BYTE = tokenizers.ByteTokenizer()
SEQ = 8
ENGLISH = "".join(
    f"Line {i}: to be, or not to be, that is the question.\n" for i in range(60)
)
CHINESE = "".join(
    f"第{i}回 甄士隐梦幻识通灵，贾雨村风尘怀闺秀。\n" for i in range(60)
)


def _texts(dataset):
    return [t.decode("utf-8") for b in dataset.as_numpy_iterator() for t in b]


def _sides(files, **kwargs):
    """(train texts, validation texts) as `make_dataset` would split them."""
    return tuple(
        _texts(data.split_documents(files, split, 0.1, **kwargs))
        for split in ("train", "validation")
    )


def _tail_split(text, fraction=0.1):
    held = math.floor(len(text) * fraction)
    return text[: len(text) - held], text[len(text) - held :]


def _windows(dataset):
    rows = [
        np.concatenate([x["token_ids"], y[:, -1:]], axis=1)
        for x, y, _ in dataset.as_numpy_iterator()
    ]
    return np.concatenate(rows)


@pytest.mark.parametrize("text", [ENGLISH, CHINESE], ids=["english", "chinese"])
def test_one_file_holds_out_its_tail(tmp_path, text, caplog):
    """The old failure: one file is one document, so the per-document split
    gave the validation split 0 windows."""
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="tflm.data.split"):
        train, validation = _sides([str(path)])
    head, tail = _tail_split(text)
    assert (train, validation) == ([head], [tail])
    assert head + tail == text and tail  # disjoint and complete
    assert caplog.text.count("holding out the last 10% of each document") == 1
    dataset = data.make_dataset(
        str(path), BYTE, sequence_length=SEQ, batch_size=2, split="validation"
    )
    expected = BYTE.tokenize(tail).numpy().tolist() + [BYTE.eos_id]
    windows = _windows(dataset)
    assert len(windows) == len(expected) // (SEQ + 1) > 0
    assert sorted(map(tuple, windows)) == sorted(
        tuple(expected[i : i + SEQ + 1])
        for i in range(0, len(windows) * (SEQ + 1), SEQ + 1)
    )


def test_a_few_files_each_hold_out_their_tail(tmp_path):
    files = []
    for i, text in enumerate([ENGLISH, CHINESE, ENGLISH[:500]]):
        files.append(str(tmp_path / f"part{i}.txt"))
        with open(files[-1], "w", encoding="utf-8") as f:
            f.write(text)
    assert data.resolve_split(files, 0.1) == "tail"
    train, validation = _sides(files)
    texts = [ENGLISH, CHINESE, ENGLISH[:500]]
    assert train == [_tail_split(t)[0] for t in texts]
    assert validation == [_tail_split(t)[1] for t in texts]


def test_one_long_jsonl_record_holds_out_its_tail(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": CHINESE}) + "\n", encoding="utf-8")
    train, validation = _sides([str(path)], cache_dir=str(tmp_path / "c"))
    head, tail = _tail_split(CHINESE)
    assert (train, validation) == ([head], [tail])


def test_many_documents_are_held_out_whole(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text(ENGLISH, encoding="utf-8")
    files = [str(path)]
    assert data.resolve_split(files, 0.1, text_format="line") == "document"
    train, validation = _sides(files, text_format="line")
    lines = ENGLISH.splitlines()
    assert sorted(train + validation) == sorted(lines)
    assert not set(train) & set(validation)
    flags = data.is_validation(np.array(lines), 0.1).numpy()
    assert validation == [
        line for line, v in zip(lines, flags, strict=True) if v
    ]


def test_uneven_document_sizes_fall_back_to_tails():
    # 200 short documents and one holding most of the text: whichever side
    # the big one lands on, whole documents cannot hold out about 10%.
    docs = [f"short {i}" for i in range(200)] + ["big " * 10_000]
    batches = tf.data.Dataset.from_tensors(tf.constant(docs))
    mode, reason = data.choose_split(batches, 0.1)
    assert mode == "tail"
    assert "of the text" in reason


def test_choice_is_deterministic_and_shared_by_train_and_eval(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(CHINESE, encoding="utf-8")
    first = _sides([str(path)])
    again = _sides([str(path)], split_mode="tail")
    assert first == again
    # Forcing the per-document way on one document: all or nothing.
    forced = _sides([str(path)], split_mode="document")
    assert sorted(len(side) for side in forced) == [0, 1]


def test_bad_split_mode(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(ENGLISH)
    with pytest.raises(errors.InputError, match="split_mode"):
        _sides([str(path)], split_mode="random")
