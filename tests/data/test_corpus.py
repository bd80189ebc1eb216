import os

import pytest

from tflm import data
from tflm import errors

PARAGRAPHS = "first para\nline two\n\n  \nsecond 红楼梦\n\n\n third 🙂\n"


def _docs(dataset):
    return [doc.decode("utf-8") for doc in dataset.as_numpy_iterator()]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text(PARAGRAPHS, encoding="utf-8")
    (root / "a.txt").write_text("alpha\n", encoding="utf-8")
    (root / "sub" / "c.jsonl").write_text(
        '{"text": "from json\\nline"}\n\n{"text": "\\u7ea2 two", "id": 2}\n',
        encoding="utf-8",
    )
    (root / "notes.md").write_text("ignored in folders")
    return root


def test_find_files_expands_folders_globs_and_dedupes(folder):
    found = data.find_files([str(folder), str(folder / "*.txt")])
    names = [os.path.relpath(f, folder) for f in found]
    assert names == ["a.txt", "b.txt", os.path.join("sub", "c.jsonl")]
    assert data.find_files(str(folder / "notes.md")) == [
        str(folder / "notes.md")
    ]


def test_find_files_errors_name_the_path(tmp_path):
    with pytest.raises(errors.InputError, match="nothing-here"):
        data.find_files([str(tmp_path / "nothing-here*.txt")])
    with pytest.raises(errors.InputError, match="no .txt or .jsonl"):
        data.find_files([str(tmp_path)])
    with pytest.raises(errors.InputError, match="no data paths"):
        data.find_files([])


@pytest.mark.parametrize(
    "text_format, expected",
    [
        ("document", [PARAGRAPHS]),
        (
            "paragraph",
            ["first para\nline two", "second 红楼梦", " third 🙂\n"],
        ),
        (
            "line",
            ["first para", "line two", "second 红楼梦", " third 🙂"],
        ),
    ],
)
def test_text_formats(folder, text_format, expected):
    files = [str(folder / "b.txt")]
    docs = _docs(data.read_documents(files, text_format=text_format))
    assert docs == expected
    assert list(data.iter_documents(files, text_format)) == expected


def test_jsonl_documents_are_read_through_a_cache(folder, tmp_path):
    files = data.find_files([str(folder)])
    cache = tmp_path / "cache"
    before = sorted(os.walk(folder))
    docs = _docs(data.read_documents(files, cache_dir=str(cache)))
    assert docs == ["alpha\n", PARAGRAPHS, "from json\nline", "红 two"]
    assert sorted(os.walk(folder)) == before  # nothing written there
    assert len(os.listdir(cache / "jsonl")) == 2
    again = _docs(data.read_documents(files, cache_dir=str(cache)))
    assert again == docs


def test_jsonl_line_without_field_names_file_line_and_fields(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text", "id": 3}\n')
    with pytest.raises(errors.InputError) as caught:
        data.read_documents([str(path)], cache_dir=str(tmp_path / "c"))
    assert str(caught.value).startswith(
        f"{path}:2: no 'text' field (the record has: 'body', 'id'). Name "
        "the field that holds the text with jsonl_field= (CLI: --jsonl-field)"
    )
    with pytest.raises(errors.InputError, match=r"bad.jsonl:1: no 'body'"):
        data.read_documents(
            [str(path)], jsonl_field="body", cache_dir=str(tmp_path / "c")
        )
    path.write_text('{"text": "ok"}\n["a list"]\n')
    with pytest.raises(errors.InputError, match=r"bad.jsonl:2: a JSON list"):
        data.read_documents([str(path)], cache_dir=str(tmp_path / "c"))
    path.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(errors.InputError, match=r"bad.jsonl:2: .* is a int"):
        data.read_documents([str(path)], cache_dir=str(tmp_path / "c"))


def test_broken_jsonl_line_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "cut off\n')
    with pytest.raises(errors.InputError) as caught:
        data.read_documents([str(path)], cache_dir=str(tmp_path / "d"))
    assert str(caught.value).startswith(f"{path}:3: not valid JSON (")
    assert "column" in str(caught.value)
    assert os.listdir(tmp_path / "d" / "jsonl") == []  # no partial cache


def test_iter_documents_checks_jsonl_before_it_returns(tmp_path):
    """The old failure: the error came from inside the consumer (for
    SentencePiece, as `INTERNAL: ValueError` with a stack)."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "fine"}\nnot json\n')
    with pytest.raises(errors.InputError, match=r"bad.jsonl:3: not valid"):
        data.iter_documents([str(path)], cache_dir=str(tmp_path / "c"))
    path.write_text('{"text": "ok"}\n{"text": "fine\\nline"}\n')
    docs = data.iter_documents(
        [str(path)], "line", cache_dir=str(tmp_path / "c")
    )
    assert list(docs) == ["ok", "fine", "line"]


def test_invalid_utf8_text_is_refused_naming_line_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok\ncafé\nnaïve\n".encode("latin-1"))
    with pytest.raises(errors.InputError) as info:
        data.read_documents([str(path)])
    assert str(info.value).startswith(
        f"{path}:2: not UTF-8 text (the first bad byte is at byte offset 6)"
    )
    assert "iconv -f LATIN1 -t UTF-8" in str(info.value)
    with pytest.raises(errors.InputError, match="latin1.txt:2: not UTF-8"):
        list(data.iter_documents([str(path)]))


def test_invalid_utf8_offset_counts_bytes_of_earlier_lines(tmp_path):
    content = "红楼梦\n\nok line\n".encode() + b"abc\xff\xfe\n" + b"x\xc3"
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    bad, line, offset = data.find_invalid_utf8(str(path))
    assert (bad, line, offset) == (2, 4, content.index(b"\xff"))
    path.write_bytes("红楼梦 valid".encode())
    assert data.find_invalid_utf8(str(path)) == (0, 0, 0)


def test_invalid_utf8_in_jsonl_is_refused_the_same_way(tmp_path):
    good = b'{"text": "one"}\n'
    path = tmp_path / "bad.jsonl"
    path.write_bytes(good + b'{"text": "caf\xe9"}\n')
    offset = len(good) + len('{"text": "caf')
    with pytest.raises(errors.InputError) as info:
        data.read_documents([str(path)], cache_dir=str(tmp_path))
    assert str(info.value).startswith(
        f"{path}:2: not UTF-8 text (the first bad byte is at byte offset "
        f"{offset})"
    )


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(errors.InputError, match="corpus is empty.*empty"):
        data.read_documents([str(tmp_path / "empty.txt")])


def test_sample_texts_stops_at_the_budget(folder):
    files = data.find_files([str(folder)])
    sample = data.sample_texts(files, 10)
    assert sample == ["alpha\n", "firs"]
