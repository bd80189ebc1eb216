"""Task examples: parsing, the template, and the completion-only loss mask."""

import json

import numpy as np
import pytest

from tflm import errors
from tflm import tokenizers
from tflm.data import tasks
from tflm.tokenizers import template_render

TOKENIZER = tokenizers.ByteTokenizer()


def _write(path, records):
    path.write_text(
        "".join(
            (r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records
        ),
        encoding="utf-8",
    )
    return str(path)


def _masked_text(ids, weight):
    kept = ids[weight > 0]
    eos = int(np.sum(kept == TOKENIZER.eos_id))
    text = TOKENIZER.detokenize(kept[kept != TOKENIZER.eos_id]).numpy()
    return text.decode(), eos


def test_prompt_completion_mask_covers_exactly_the_completion(tmp_path):
    path = _write(
        tmp_path / "a.jsonl",
        [{"prompt": "cat", "completion": "chat"}, {"q": "one", "a": "un"}][:1],
    )
    examples = tasks.read_examples([path])
    ids, loss, real = tasks.encode_examples(examples, TOKENIZER, 64)
    assert loss.sum() == len("chat") + 1  # And the end id.
    assert _masked_text(ids[0], loss[0]) == ("chat", 1)
    assert real[0].sum() == len(
        template_render.encode(examples[0], TOKENIZER)[0]
    )


def test_configurable_fields(tmp_path):
    path = _write(tmp_path / "a.jsonl", [{"q": "one", "a": "un"}])
    (example,) = tasks.read_examples(
        [path], prompt_field="q", completion_field="a"
    )
    assert example[-1] == {"role": "assistant", "content": "un"}


def test_chat_mask_covers_every_assistant_turn(tmp_path):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    path = _write(tmp_path / "c.jsonl", [{"messages": messages}])
    ids, loss, _ = tasks.encode_examples(
        tasks.read_examples([path]), TOKENIZER, 128
    )
    assert loss.sum() == len("hello") + len("ciao") + 2
    assert _masked_text(ids[0], loss[0]) == ("hellociao", 2)
    # The prompt part is what serving tokenizes for the last reply.
    prompt = template_render.encode_prompt(messages[:-1], TOKENIZER)
    np.testing.assert_array_equal(ids[0, : len(prompt)], prompt)


def test_long_examples_lose_prompt_tokens_and_are_counted(tmp_path, caplog):
    records = [
        {"prompt": "x" * 50, "completion": "abc"},
        {"prompt": "y", "completion": "de"},
    ]
    path = _write(tmp_path / "a.jsonl", records)
    ids, loss, real = tasks.encode_examples(
        tasks.read_examples([path]), TOKENIZER, 34
    )
    assert loss[0].sum() == 4 and loss[1].sum() == 3
    assert _masked_text(ids[0], loss[0]) == ("abc", 1)
    assert ids[0, 0] == TOKENIZER.bos_id and real[0].all()
    assert "1 of 2 examples" in caplog.text


def test_a_completion_longer_than_the_window_keeps_its_start(tmp_path):
    path = _write(
        tmp_path / "a.jsonl", [{"prompt": "p", "completion": "z" * 40}]
    )
    ids, loss, _ = tasks.encode_examples(
        tasks.read_examples([path]), TOKENIZER, 10
    )
    assert loss[0].sum() == 10  # Everything after the start id.


def test_shifted_batches_weight_the_completion_labels(tmp_path):
    path = _write(tmp_path / "a.jsonl", [{"prompt": "ab", "completion": "ba"}])
    windows = tasks.encode_examples(tasks.read_examples([path]), TOKENIZER, 40)
    x, y, weight = next(iter(tasks.to_dataset(windows, batch_size=1)))
    labels = np.asarray(y)[np.asarray(weight) > 0]
    assert TOKENIZER.detokenize(labels).numpy() == b"ba"
    assert labels[-1] == TOKENIZER.eos_id


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a", "completion": ', ":2: not valid JSON"),
        ('{"prompt": "a"}', ":2: no 'completion' field"),
        (
            '{"prompt": "a", "completion": ""}',
            "completion 'completion' is empty",
        ),
        (
            '{"messages": [{"role": "robot", "content": "x"}]}',
            "role 'robot'",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}]}',
            "ends with a 'user' turn",
        ),
        ('{"messages": []}', "non-empty list"),
        ('{"prompt": ' + "[" * 100_000, "nested too deeply"),
        ('{"prompt": "a\\ud800", "completion": "b"}', "surrogate \\\\ud800"),
    ],
)
def test_bad_examples_name_file_and_line(tmp_path, line, message):
    path = _write(
        tmp_path / "bad.jsonl", ['{"prompt": "a", "completion": "b"}', line]
    )
    with pytest.raises(errors.InputError, match=message) as info:
        tasks.read_examples([path])
    assert f"{path}:2" in str(info.value)


def test_an_example_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = b'{"prompt": "a", "completion": "b"}\n'
    path.write_bytes(
        good + '{"prompt": "café", "completion": "b"}\n'.encode("latin-1")
    )
    offset = len(good) + len('{"prompt": "caf')
    with pytest.raises(errors.InputError) as info:
        tasks.read_examples([str(path)])
    assert str(info.value).startswith(
        f"{path}:2: not UTF-8 text (the first bad byte is at byte offset "
        f"{offset})"
    )


def test_split_holds_out_a_fixed_share():
    train, held = tasks.split_indices(100, 0.1)
    assert len(held) == 10 and not set(train) & set(held)
    np.testing.assert_array_equal(held, tasks.split_indices(100, 0.1)[1])


def test_windows_fit_the_longest_example_when_asked(tmp_path):
    """Without --sequence-length, a long-context model is not trained on
    padding: the windows are the longest example rounded up to 16."""
    records = [
        {"prompt": "p" * 5, "completion": "c" * 3},
        {"prompt": "q", "completion": "d" * 20},
    ]
    examples = tasks.read_examples([_write(tmp_path / "a.jsonl", records)])
    longest = max(
        len(template_render.encode(e, TOKENIZER)[0]) for e in examples
    )
    ids, loss, real = tasks.encode_examples(
        examples, TOKENIZER, 1000, fit_longest=True
    )
    assert ids.shape[1] == -(-longest // 16) * 16 < 1001
    assert real.sum(axis=1).max() == longest
    full, _, _ = tasks.encode_examples(examples, TOKENIZER, 1000)
    assert full.shape[1] == 1001
    np.testing.assert_array_equal(full[:, : ids.shape[1]], ids)
    # Never wider than the context allows.
    capped, _, _ = tasks.encode_examples(
        examples, TOKENIZER, 10, fit_longest=True
    )
    assert capped.shape[1] == 11
