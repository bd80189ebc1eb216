import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf

from tflm import tokenizers

# Any Unicode text that UTF-8 can encode (lone surrogates cannot be).
TEXTS = st.lists(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    min_size=1,
    max_size=4,
)
TOKENIZER = tokenizers.ByteTokenizer()


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
def round_trip(texts):
    return TOKENIZER.detokenize(TOKENIZER.tokenize(texts))


def test_ids_are_bytes_plus_offset():
    ids = TOKENIZER.tokenize("aé")
    assert ids.dtype == tf.int32
    assert ids.numpy().tolist() == [97 + 3, 0xC3 + 3, 0xA9 + 3]
    assert TOKENIZER.vocabulary_size == 259
    assert (TOKENIZER.pad_id, TOKENIZER.bos_id, TOKENIZER.eos_id) == (0, 1, 2)


def test_batch_gives_ragged_ids():
    ids = TOKENIZER.tokenize(["ab", "", "红"])
    assert isinstance(ids, tf.RaggedTensor)
    assert ids.row_lengths().numpy().tolist() == [2, 0, 3]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(TEXTS)
def test_round_trip_is_exact(texts):
    out = round_trip(tf.constant(texts)).numpy()
    assert [t.decode("utf-8") for t in out] == texts


def test_detokenize_drops_special_and_out_of_range_ids():
    ids = [1, 97 + 3, 0, 98 + 3, 2, 999, -5]
    assert TOKENIZER.detokenize(ids).numpy() == b"ab"


def test_detokenize_dense_batch():
    ids = np.array([[104 + 3, 105 + 3], [105 + 3, 0]], np.int64)
    assert TOKENIZER.detokenize(ids).numpy().tolist() == [b"hi", b"i"]


def test_detokenize_character_cut_in_half_gives_bytes():
    ids = TOKENIZER.tokenize("红").numpy()[:2]
    assert TOKENIZER.detokenize(ids).numpy() == "红".encode()[:2]


def test_tokenize_rejects_matrix():
    with pytest.raises(ValueError, match="shape"):
        TOKENIZER.tokenize([["a"]])


def test_save_and_load(tmp_path):
    TOKENIZER.save(tmp_path)
    loaded = tokenizers.load_tokenizer(tmp_path)
    assert isinstance(loaded, tokenizers.ByteTokenizer)
    text = ["héllo 🙂"]
    assert loaded.tokenize(text).to_list() == TOKENIZER.tokenize(text).to_list()
