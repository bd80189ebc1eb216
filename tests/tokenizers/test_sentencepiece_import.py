"""Published SentencePiece models (Llama 2, Mistral, TinyLlama layout) give
the ids of `sentencepiece` and of transformers' `AutoTokenizer`.

Nothing is downloaded: a small model is trained as those models were (BPE,
byte fallback, split digits, dummy prefix, identity normalization, unk 0,
bos 1, eos 2, no pad) and written with configs shaped like theirs.
"""

import io
import json
import os
import random
import re

import hypothesis
import hypothesis.strategies as st
import pytest
import sentencepiece
import tensorflow as tf

from tflm import errors
from tflm import tokenizers

transformers = pytest.importorskip("transformers")

WORDS = (
    "the quick brown fox jumps over lazy dog Hello world tokenizer The "
    "红楼梦 中文 世界 你好 的 了 是 café naïve über 🙂 🚀 👍🏽 def return "
    "import print(x) x = 1 for i in range(10): {} [] () <= >= != 3.14159 "
    "2024 1,000,000 foo_bar camelCase http://example.com"
).split(" ")
SEPARATORS = [" ", " ", " ", "  ", "   ", "\t", "\n", "\n    ", "    "]
_TOKEN = {"lstrip": False, "normalized": False, "rstrip": False}
_TOKEN |= {"single_word": False}


def _token(content, special=None):
    token = {"__type": "AddedToken", "content": content, **_TOKEN}
    return token if special is None else {**token, "special": special}


# Shaped like the checkpoints' own tokenizer_config.json files.
CONFIGS = {
    "llama-2": {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _token("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": _token("</s>"),
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _token("<unk>"),
    },
    "mistral": {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): _token(text, special=True)
            for i, text in enumerate(["<unk>", "<s>", "</s>"])
        },
        "additional_special_tokens": [],
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": True,
        "pad_token": None,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    },
    "tinyllama": {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": "</s>",
        "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    },
}

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "红楼梦是中文小说, 你好世界",
    "emoji 🙂🚀 and 👍🏽 skin tones",
    "def f(x):\n    return x + 1\n",
    "for i in range(10):\n\tprint(i)",
    "numbers 3.14159, 2024 and 1,000,000",
    "a  b   c    d",
    "trailing spaces   ",
    "line one\nline two\n\nline four",
    "\n starts with a newline",
    "x\r\ny",
    "鬱 is not in the vocabulary",
    "naïve café über",
    "nbsp\u00a0and\u3000ideographic space",
    "",
    "\n",
    "\t",
]
# sentencepiece puts its dummy prefix before these, transformers does not.
LEADING = [" the", "  two spaces", "   ", "\u2581x", " \u2581", "\u2581", " "]


def _train(**overrides):
    rng = random.Random(0)
    lines = []
    for _ in range(400):
        count = rng.randint(3, 14)
        words = [rng.choice(WORDS) for _ in range(count)]
        seps = [rng.choice(SEPARATORS) for _ in range(count - 1)] + [""]
        lines.append("".join(w + s for w, s in zip(words, seps, strict=True)))
    options = dict(
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        allow_whitespace_only_pieces=True,
        character_coverage=0.99,
        num_threads=1,
        minloglevel=2,
    )
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, **options | overrides
    )
    return model.getvalue()


def _write(directory, model, tokenizer_config=None, **files):
    """A checkpoint folder: `tokenizer.model` and `<name>.json` files."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(model)
    files["tokenizer_config"] = tokenizer_config
    for name, value in files.items():
        if value is not None:
            with open(os.path.join(directory, f"{name}.json"), "w") as f:
                json.dump(value, f)
    return str(directory)


@pytest.fixture(scope="module")
def model():
    return _train()


@pytest.fixture(scope="module")
def published(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    folders = {n: _write(root / n, model, c) for n, c in CONFIGS.items()}
    # A Mistral model folder: transformers then builds its generic
    # SentencePiece tokenizer, which encodes as sentencepiece does.
    folders["mistral-model"] = _write(
        root / "mistral-model",
        model,
        CONFIGS["mistral"],
        config={"model_type": "mistral"},
    )
    return folders


@pytest.fixture(scope="module")
def processor(model):
    return sentencepiece.SentencePieceProcessor(model_proto=model)


def _auto(directory):
    return transformers.AutoTokenizer.from_pretrained(directory)


def _hf_ids(hf, texts, **kwargs):
    kwargs.setdefault("add_special_tokens", False)
    return [hf(text, **kwargs).input_ids for text in texts]


FOLDERS = [*CONFIGS, "mistral-model"]


@pytest.mark.parametrize("name", FOLDERS)
def test_ids_equal_sentencepiece_and_transformers(published, processor, name):
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(published[name])
    hf = _auto(published[name])
    got = tok.tokenize(tf.constant(TEXTS + LEADING)).to_list()
    assert got == _hf_ids(hf, TEXTS + LEADING)
    assert got[: len(TEXTS)] == processor.encode(TEXTS)
    assert tok.unk_id not in sum(got, [])


def test_a_leading_space_follows_transformers(published, processor):
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(
        published["llama-2"]
    )
    ids = tok.tokenize(LEADING).to_list()
    meta = processor.piece_to_id("\u2581")
    # transformers: a leading space (or U+2581) is the prefix itself, so
    # " the" gives sentencepiece's ids for "the"; sentencepiece's dummy
    # prefix comes on top of it.
    for text, row in zip(LEADING, ids, strict=True):
        assert row == (processor.encode(text[1:]) or [meta]), text
        assert row != processor.encode(text), text
    assert ids[0] == [processor.piece_to_id("\u2581the")]
    # A Mistral model folder follows sentencepiece, and keeps the space.
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(
        published["mistral-model"]
    )
    assert tok.prepend_scheme is None
    ids = tok.tokenize(LEADING)
    assert ids.to_list() == processor.encode(LEADING)
    decoded = [text.decode() for text in tok.detokenize(ids).numpy()]
    assert decoded == [text.replace("\u2581", " ") for text in LEADING]


CHUNKS = st.sampled_from(
    WORDS + SEPARATORS + ["\u2581", "\r\n", "\x00", "鬱", "  ", ".", "!"]
)
TEXT = st.lists(
    CHUNKS | st.text(st.characters(exclude_categories=("Cs",)), max_size=4),
    max_size=8,
).map("".join)


@pytest.fixture(scope="module")
def llama(published):
    return (
        tokenizers.SentencePieceTokenizer.from_huggingface(
            published["llama-2"]
        ),
        _auto(published["llama-2"]),
    )


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.lists(TEXT, min_size=1, max_size=8))
def test_any_text_gives_transformers_ids(llama, processor, texts):
    tok, hf = llama
    got = tok.tokenize(tf.constant(texts)).to_list()
    assert got == _hf_ids(hf, texts)
    for text, ids in zip(texts, got, strict=True):
        if not text.startswith((" ", "\u2581")):
            assert ids == processor.encode(text)
        if not text.startswith(" ") and "\u2581" not in text:
            decoded = tok.detokenize(tf.constant(ids, tf.int32))
            assert decoded.numpy().decode() == text


@pytest.mark.parametrize("name", FOLDERS)
def test_add_bos_is_what_transformers_prepends(published, name):
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(published[name])
    hf = _auto(published[name])
    assert tok.add_bos and not tok.add_eos
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    with_bos = _hf_ids(hf, TEXTS, add_special_tokens=True)
    ids = tok.tokenize(TEXTS).to_list()
    assert with_bos == [[tok.bos_id] + row for row in ids]


def test_add_bos_and_add_eos_follow_the_config(model, tmp_path):
    config = CONFIGS["llama-2"] | {"add_bos_token": False}
    config |= {"add_eos_token": True}
    directory = _write(tmp_path / "eos", model, config)
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(directory)
    assert not tok.add_bos and tok.add_eos
    hf_ids = _auto(directory)("Hello world").input_ids
    assert hf_ids == tok.tokenize("Hello world").numpy().tolist() + [2]
    config = CONFIGS["llama-2"] | {"bos_token": None}
    directory = _write(tmp_path / "nobos", model, config)
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(directory)
    assert not tok.add_bos and tok.bos_id == 1
    ids = tok.tokenize("Hi").numpy().tolist()
    assert _auto(directory)("Hi").input_ids == ids


def test_round_trip_where_lossless(llama):
    tok, hf = llama

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(texts):
        return tok.detokenize(tok.tokenize(texts))

    out = [t.decode() for t in round_trip(tf.constant(TEXTS)).numpy()]
    assert out == TEXTS
    ids = tok.tokenize(LEADING + ["a\u2581b"]).to_list()
    decoded = tok.detokenize(tf.ragged.constant(ids)).numpy()
    decoded = [t.decode() for t in decoded]
    # One leading space is dropped, U+2581 comes back as a space: as
    # transformers' decode does.
    assert decoded == [hf.decode(row) for row in ids]
    assert decoded[:2] == ["the", " two spaces"] and decoded[-1] == "a b"


def test_special_tokens_are_never_read_from_text(published, processor):
    for name in CONFIGS:
        tok = tokenizers.SentencePieceTokenizer.from_huggingface(
            published[name]
        )
        assert tok.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2}
    text = "a </s> b <s> c <unk>"
    ids = tok.tokenize(text).numpy().tolist()
    assert not {0, 1, 2} & set(ids)
    assert ids == processor.encode(text)
    # transformers reads them as special tokens.
    assert {0, 1, 2} <= set(_auto(published["llama-2"]).encode(text))


@pytest.mark.parametrize(
    "pad_token, pad_id, hf_pad_id",
    [(None, 2, None), ("</s>", 2, 2), ("<unk>", 0, 0), (_token("<s>"), 1, 1)],
)
def test_pad_is_the_configured_token_else_eos(
    model, tmp_path, pad_token, pad_id, hf_pad_id
):
    config = CONFIGS["llama-2"] | {"pad_token": pad_token}
    directory = _write(tmp_path / "pad", model, config)
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(directory)
    assert tok.pad_id == pad_id
    assert _auto(directory).pad_token_id == hf_pad_id


LLAMA = {"tokenizer_class": "LlamaTokenizer"}


@pytest.mark.parametrize(
    "tokenizer_config, model_type, scheme",
    [
        (LLAMA | {"legacy": False}, "llama", "first"),
        (LLAMA | {"legacy": True}, "llama", "always"),
        (LLAMA | {"legacy": None}, None, "first"),
        (LLAMA | {"add_prefix_space": False}, None, "never"),
        (LLAMA | {"legacy": True, "add_bos_token": True}, "mixtral", None),
        ({"legacy": False}, None, "first"),
        ({"add_bos_token": True}, None, None),
        (None, None, None),
    ],
)
def test_the_space_rule_is_the_one_transformers_picks(
    model, tmp_path, tokenizer_config, model_type, scheme
):
    config = None if model_type is None else {"model_type": model_type}
    directory = _write(tmp_path, model, tokenizer_config, config=config)
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(directory)
    hf = _auto(directory)
    assert tok.prepend_scheme == scheme
    texts = TEXTS + LEADING + ["[INST] Hello [/INST]"]
    assert tok.tokenize(texts).to_list() == _hf_ids(hf, texts)
    after = tok.tokenize_after_special(texts).to_list()
    expected = _hf_ids(hf, ["</s>" + text for text in texts])
    assert [[2] + row for row in after] == expected
    # add_bos_token is false when absent, as in transformers 5.
    assert tok.add_bos == (hf("x").input_ids[0] == 1)
    assert tok.add_bos == bool((tokenizer_config or {}).get("add_bos_token"))


def test_save_and_load_keep_ids_and_config(llama, published, tmp_path):
    tok, _ = llama
    tok.save(tmp_path / "tok")
    assert sorted(os.listdir(tmp_path / "tok")) == [
        "sentencepiece.model",
        "tokenizer.json",
    ]
    saved = (tmp_path / "tok" / "sentencepiece.model").read_bytes()
    with open(os.path.join(published["llama-2"], "tokenizer.model"), "rb") as f:
        assert saved == f.read()  # the published file, unchanged
    loaded = tokenizers.load_tokenizer(tmp_path / "tok")
    assert loaded.get_config() == tok.get_config()
    assert tok.get_config() == {
        "vocabulary_size": 600,
        "pad_id": 2,
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 0,
        "model_file": "sentencepiece.model",
        "escape": False,
        "prepend_scheme": "first",
        "add_bos": True,
        "special_tokens": {"<unk>": 0, "<s>": 1, "</s>": 2},
    }
    texts = tf.constant(TEXTS + LEADING)
    assert loaded.tokenize(texts).to_list() == tok.tokenize(texts).to_list()
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.add_bos and not loaded.newline_is_boundary


def test_tflm_trained_config_is_unchanged(tmp_path):
    tok = tokenizers.SentencePieceTokenizer.train(
        texts=["the king 红楼 a  b\n"] * 40, vocabulary_size=280
    )
    config = tok.get_config()
    assert config == {
        "vocabulary_size": 280,
        "pad_id": 0,
        "bos_id": 2,
        "eos_id": 3,
        "unk_id": 1,
        "model_file": "sentencepiece.model",
    }
    assert (tok.escape, tok.prepend_scheme, tok.add_bos, tok.add_eos) == (
        True,
        None,
        False,
        False,
    )
    assert tok.special_tokens == {} and tok.newline_is_boundary
    text = "\u2581 lead \ue000"
    assert tok.detokenize(tok.tokenize(text)).numpy().decode() == text


def test_legacy_files_are_read_without_added_tokens_decoder(model, tmp_path):
    config = dict(CONFIGS["llama-2"])
    del config["pad_token"]
    directory = _write(
        tmp_path / "legacy_files",
        model,
        config,
        special_tokens_map={"pad_token": "<unk>"},
    )
    tok = tokenizers.SentencePieceTokenizer.from_huggingface(directory)
    assert tok.pad_id == _auto(directory).pad_token_id == 0
    with open(os.path.join(directory, "added_tokens.json"), "w") as f:
        json.dump({"<pad>": 600}, f)
    assert len(_auto(directory)) == 601  # transformers adds an id
    with pytest.raises(errors.InputError, match="600: '<pad>'"):
        tokenizers.SentencePieceTokenizer.from_huggingface(directory)


def test_missing_model_is_refused(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(errors.InputError, match="has no tokenizer.model"):
        tokenizers.SentencePieceTokenizer.from_huggingface(tmp_path)


def test_corrupt_model_is_refused(tmp_path):
    _write(tmp_path, b"not a model\x00\xff" * 10, CONFIGS["llama-2"])
    with pytest.raises(errors.InputError, match="not a SentencePiece model"):
        tokenizers.SentencePieceTokenizer.from_huggingface(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"added_tokens_decoder": {"600": _token("<pad>", True)}}, "<pad>"),
        ({"pad_token": "<pad>"}, "'<pad>'"),
        ({"additional_special_tokens": ["<|im_end|>"]}, "<|im_end|>"),
        ({"added_tokens_decoder": {"9": _token("<x>", False)}}, "9: '<x>'"),
        ({"tokenizer_class": "T5Tokenizer"}, "T5Tokenizer"),
        ({"legacy": "yes"}, "legacy must be true or false"),
    ],
)
def test_config_is_refused(model, tmp_path, change, message):
    directory = _write(tmp_path, model, CONFIGS["mistral"] | change)
    with pytest.raises(errors.InputError, match=re.escape(message)):
        tokenizers.SentencePieceTokenizer.from_huggingface(directory)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model_type": "unigram", "vocab_size": 400}, "not a BPE model"),
        ({"byte_fallback": False, "vocab_size": 200}, "no byte fallback"),
        ({"user_defined_symbols": ["<x>"]}, "user-defined pieces"),
    ],
)
def test_models_transformers_runs_differently_are_refused(
    tmp_path, overrides, message
):
    directory = _write(tmp_path, _train(**overrides), CONFIGS["llama-2"])
    with pytest.raises(errors.InputError, match=message):
        tokenizers.SentencePieceTokenizer.from_huggingface(directory)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prepend_scheme": "sometimes"}, "prepend_scheme must be"),
        ({"escape": "no"}, "escape must be True or False"),
        ({"special_tokens": {"<s>": 600}}, "special_tokens must be ids"),
        ({"pad_id": -1}, "pad_id, bos_id and eos_id must be ids"),
    ],
)
def test_bad_arguments_are_refused(model, kwargs, message):
    with pytest.raises(errors.InputError, match=message):
        tokenizers.SentencePieceTokenizer(model, **kwargs)
