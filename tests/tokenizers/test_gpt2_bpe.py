"""The GPT-2 BPE tokenizer against keras-hub's and OpenAI's algorithm."""

import json
import os
import random

import gpt2_files
import hypothesis
import hypothesis.strategies as st
import pytest
import tensorflow as tf

from tflm import tokenizers
from tflm.tokenizers import gpt2_bpe

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 12345, isn't it?",
    "今天天气很好。我们去公园散步吧!",
    "I love pizza 🍕🍕 and cats 🐱! 👍🏽 👩‍👩‍👧",
    "  two spaces,\n\nnew lines\tand a tab  ",
]
# Whitespace runs, contractions after spaces, Unicode spaces, marks, digits.
ALPHABET = list("ab hello's'tre 12.,!?-\n\n\t\r") + [
    "\u00a0",
    "\u3000",
    "\u2009",
    "\x0b",
    "\x85",
    "好",
    "🍕",
    "é",
    "\u0301",
    "\u200d",
    "٣",
    "\x00",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("gpt2_tokenizer"))
    gpt2_files.write_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(files):
    return gpt2_bpe.GPT2BPETokenizer.from_directory(files)


def test_ids_equal_keras_hub(files, tokenizer):
    keras_hub = pytest.importorskip("keras_hub")
    reference = keras_hub.models.GPT2Tokenizer(
        vocabulary=os.path.join(files, "vocab.json"),
        merges=os.path.join(files, "merges.txt"),
    )
    ours = tokenizer.tokenize(TEXTS).to_list()
    eager = [list(map(int, ids)) for ids in reference(TEXTS)]
    in_graph = tf.function(reference)(tf.constant(TEXTS)).to_list()
    assert ours == eager == in_graph
    # Merges apply: fewer ids than bytes.
    assert sum(map(len, ours)) < sum(len(t.encode()) for t in TEXTS)


def test_ids_equal_openai_algorithm(files, tokenizer):
    transformers = pytest.importorskip("transformers")
    reference = transformers.GPT2Tokenizer(
        os.path.join(files, "vocab.json"), os.path.join(files, "merges.txt")
    )
    rng = random.Random(0)
    texts = [
        "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 20)))
        for _ in range(300)
    ]
    ours = tokenizer.tokenize(texts).to_list()
    assert ours == [reference.encode(t) for t in texts]


@pytest.fixture(scope="module")
def round_trip(tokenizer):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def run(texts):
        return tokenizer.detokenize(tokenizer.tokenize(texts))

    return run


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    st.lists(
        st.text(st.characters(exclude_categories=("Cs",)), max_size=30),
        min_size=1,
        max_size=3,
    )
)
def test_round_trip_is_exact(round_trip, texts):
    out = round_trip(tf.constant(texts + TEXTS)).numpy()
    assert [t.decode("utf-8") for t in out] == texts + TEXTS


def test_special_ids_and_detokenize(tokenizer):
    eos = tokenizer.vocabulary["<|endoftext|>"]
    assert tokenizer.eos_id == tokenizer.bos_id == tokenizer.pad_id == eos
    assert tokenizer.vocabulary_size == len(tokenizer.vocabulary)
    # Literal special-token text is ordinary text; eos is never produced.
    ids = tokenizer.tokenize("a<|endoftext|>b").numpy().tolist()
    assert eos not in ids
    ids = tokenizer.tokenize("好").numpy().tolist()
    assert (
        tokenizer.detokenize([eos, *ids, eos, 10**6]).numpy() == "好".encode()
    )
    # Ids that cut a character in half give its first bytes, as they are.
    cut = tokenizer.detokenize(tokenizer.tokenize("🍕")[:-1]).numpy()
    assert "🍕".encode().startswith(cut) and 0 < len(cut) < 4
    assert tokenizer.tokenize(["", " "]).to_list() == [
        [],
        tokenizer.tokenize(" ").numpy().tolist(),
    ]


def test_save_load_and_saved_model(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok")
    with open(tmp_path / "tok" / "tokenizer.json") as f:
        assert json.load(f)["type"] == "gpt2_bpe"
    loaded = tokenizers.load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, gpt2_bpe.GPT2BPETokenizer)
    expected = tokenizer.tokenize(TEXTS).to_list()
    assert loaded.tokenize(TEXTS).to_list() == expected

    module = tf.Module()
    module.tokenizer = loaded
    module.tokenize = tf.function(
        lambda t: loaded.tokenize(t).to_tensor(-1),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    tf.saved_model.save(module, str(tmp_path / "sm"))
    assets = os.listdir(tmp_path / "sm" / "assets")
    assert {"vocab.json", "merges.txt"} <= set(assets)
    restored = tf.saved_model.load(str(tmp_path / "sm"))
    ids = restored.tokenize(tf.constant(TEXTS)).numpy().tolist()
    assert [[i for i in row if i >= 0] for row in ids] == expected


def test_bad_files_are_named(tmp_path):
    vocab, merges = gpt2_files.train_bpe(num_merges=5)
    del vocab["Ġ"]
    with pytest.raises(ValueError, match="lacks 1 of the 256 byte tokens"):
        gpt2_bpe.GPT2BPETokenizer(vocab, merges)
    vocab, merges = gpt2_files.train_bpe(num_merges=5)
    gpt2_files.write_tokenizer(str(tmp_path), vocab, merges + ["x y z"])
    with pytest.raises(ValueError, match=r"merges.txt: merge 6 \('x y z'\)"):
        gpt2_bpe.GPT2BPETokenizer.from_directory(tmp_path)
    del vocab["<|endoftext|>"]
    with pytest.raises(ValueError, match="lacks '<|endoftext|>'"):
        gpt2_bpe.GPT2BPETokenizer(vocab, merges)
