import os
import random

import hypothesis
import hypothesis.strategies as st
import pytest
import tensorflow as tf
from shared_data import shared_data_path

from tflm import tokenizers

WORDS = "the king queen crown 红楼 梦 café naïve 🙂 a  b\tc".split(" ")


def tiny_lines(count=300, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=8)) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers.SentencePieceTokenizer.train(
        texts=["\n".join(tiny_lines())], vocabulary_size=300
    )


@pytest.fixture(scope="module")
def round_trip(tokenizer):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def fn(texts):
        return tokenizer.detokenize(tokenizer.tokenize(texts))

    return fn


def test_special_ids_and_vocabulary(tokenizer):
    assert tokenizer.vocabulary_size == 300
    ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id)
    assert ids + (tokenizer.eos_id,) == (0, 1, 2, 3)
    assert tokenizer.newline_is_boundary
    assert tokenizer.tokenize("\n").numpy().tolist() == [4]


def test_tokenize_shapes_and_dtypes(tokenizer):
    single = tokenizer.tokenize("the king")
    batch = tokenizer.tokenize(tf.constant(["the king", ""]))
    assert single.dtype == tf.int32 and single.shape.rank == 1
    assert isinstance(batch, tf.RaggedTensor)
    assert batch[0].numpy().tolist() == single.numpy().tolist()
    assert batch.row_lengths().numpy()[1] == 0
    assert tokenizer.detokenize(single).numpy() == b"the king"


TRICKY = [
    "",
    " ",
    "  leading and trailing  ",
    "a\n\n\tb\r\n",
    "\u2581",
    "\ue000\u2581\ue001\ue000\ue000\u2581",
    "\x00nul",
    "红楼梦 🙂 mixed ASCII",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽ \U0010ffff",
]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    st.lists(
        st.text(
            st.characters(exclude_categories=("Cs",))
            | st.sampled_from("\u2581\ue000\ue001 \n"),
            max_size=40,
        ),
        min_size=1,
        max_size=4,
    )
)
@hypothesis.example(TRICKY)
def test_round_trip_is_exact(round_trip, texts):
    out = round_trip(tf.constant(texts)).numpy()
    assert [t.decode("utf-8") for t in out] == texts


def test_no_unknown_ids_thanks_to_byte_fallback(tokenizer):
    ids = tokenizer.tokenize(tf.constant(TRICKY)).flat_values.numpy()
    assert tokenizer.unk_id not in ids
    assert ids.max() < tokenizer.vocabulary_size


def test_detokenize_drops_special_and_out_of_range_ids(tokenizer):
    ids = tokenizer.tokenize("the king").numpy().tolist()
    padded = [[2] + ids + [3, 0, 300, 5000, -1, 0]]
    assert tokenizer.detokenize(padded).numpy().tolist() == [b"the king"]


def test_detokenize_survives_a_character_cut_in_half(tokenizer):
    ids = tokenizer.tokenize("鬱").numpy().tolist()
    assert len(ids) == 3  # not in the vocabulary: three byte pieces
    assert tokenizer.detokenize(ids[:2]).numpy().decode() == "\ufffd" * 2
    assert tokenizer.detokenize(ids).numpy().decode() == "鬱"


def test_line_by_line_equals_whole_text(tokenizer):
    text = "\n".join(tiny_lines(20, seed=1)) + "\n"
    lines = [line + "\n" for line in text.split("\n")[:-1]]
    whole = tokenizer.tokenize(text).numpy().tolist()
    pieces = tokenizer.tokenize(lines).flat_values.numpy().tolist()
    assert pieces == whole


def test_save_and_load_give_same_ids(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tok")
    assert sorted(os.listdir(tmp_path / "tok")) == [
        "sentencepiece.model",
        "tokenizer.json",
    ]
    loaded = tokenizers.load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, tokenizers.SentencePieceTokenizer)
    assert loaded.model_file is not None
    assert loaded.model_proto == tokenizer.model_proto
    texts = tf.constant(TRICKY)
    assert (
        loaded.tokenize(texts).to_list() == tokenizer.tokenize(texts).to_list()
    )


def test_trains_from_files_without_writing_next_to_them(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("\n".join(tiny_lines()), encoding="utf-8")
    before = sorted(os.listdir(data))
    tok = tokenizers.SentencePieceTokenizer.train(
        [str(data / "a.txt")], vocabulary_size=300, model_type="unigram"
    )
    assert sorted(os.listdir(data)) == before
    assert tok.vocabulary_size == 300
    text = "the queen 红楼"
    assert tok.detokenize(tok.tokenize(text)).numpy().decode() == text


def test_same_seed_gives_same_model():
    texts = ["\n".join(tiny_lines())]
    first = tokenizers.SentencePieceTokenizer.train(
        texts=texts, vocabulary_size=300
    )
    second = tokenizers.SentencePieceTokenizer.train(
        texts=texts, vocabulary_size=300
    )
    assert first.model_proto == second.model_proto


def test_long_lines_are_cut_not_skipped():
    # One 20,000-character line: longer than SentencePiece accepts whole.
    text = "abcdefgh" * 2500
    tok = tokenizers.SentencePieceTokenizer.train(
        texts=[text], vocabulary_size=280
    )
    assert len(tok.tokenize(text[:80]).numpy()) < 40


@pytest.mark.parametrize(
    "size, message", [(100_000, "at most"), (200, "at least")]
)
def test_unsupported_vocabulary_size_is_explained(size, message):
    with pytest.raises(ValueError, match=message) as err:
        tokenizers.SentencePieceTokenizer.train(
            texts=["\n".join(tiny_lines())], vocabulary_size=size
        )
    assert f"vocabulary_size={size}" in str(err.value)


def test_empty_corpus_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        tokenizers.SentencePieceTokenizer.train(
            [str(empty)], vocabulary_size=300
        )


def test_unknown_model_type():
    with pytest.raises(ValueError, match="model_type"):
        tokenizers.SentencePieceTokenizer.train(
            texts=["a b"], vocabulary_size=300, model_type="word"
        )


def test_chinese_text_has_no_unknown_ids_and_round_trips():
    path = shared_data_path("hongloumeng.txt")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    tok = tokenizers.SentencePieceTokenizer.train(
        texts=["\n".join(lines[:300])], vocabulary_size=3000
    )
    ids = tok.tokenize(tf.constant(lines))
    assert tok.unk_id not in ids.flat_values.numpy()
    out = tok.detokenize(ids).numpy()
    assert [t.decode("utf-8") for t in out] == lines
    chars = sum(len(line) for line in lines)
    assert chars / int(tf.size(ids.flat_values)) > 1.0
