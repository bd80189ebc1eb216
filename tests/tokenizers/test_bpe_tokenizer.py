"""BPETokenizer against Hugging Face `tokenizers` on small trained files.

Each family's `tokenizer.json` (GPT-2, Llama 3, Qwen2, SmolLM2) is trained
once in `tmp_path` with the family's own pre-tokenizer and normalizer; the
reference ids are `tokenizers`' own, with special tokens read as text.
"""

import collections
import json
import os
import random
import unicodedata

import hypothesis
import hypothesis.strategies as st
import pytest
import tensorflow as tf

from tflm import errors
from tflm import tokenizers
from tflm.tokenizers import bpe
from tflm.tokenizers import bpe_pretokenize

hf = pytest.importorskip("tokenizers")

FAMILIES = ("gpt2", "llama3", "qwen2", "smollm2")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
CONFIGS = {
    "llama3": {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
    },
    "qwen2": {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
    },
    "smollm2": {
        "bos_token": {"content": "<|im_start|>", "__type": "AddedToken"},
        "eos_token": {"content": "<|im_end|>", "__type": "AddedToken"},
        "add_bos_token": False,
    },
}
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "It's 12345, isn't it? We'll see; they'd've known. I'M SURE YOU'RE RIGHT.",
    "今天天气很好。我们去公园散步吧！中文分词很有意思。",
    "def add(a, b):\n    return a + b  # sum\n",
    "for (int i = 0; i < 10; ++i) {\r\n\tx[i] = i * 2;\r\n}",
    "I love pizza 🍕🍕 and cats 🐱! 👍🏽 👩\u200d👩\u200d👧",
    "Café naïve résumé — señor Ünïcödé, déjà vu.",
    "Prices: $3.50, €12,000.99 and 1234567890 or ٣٤٥.",
    "   leading spaces\t\ttabs\r\nand CRLF\n\n\nblank lines   ",
    "HELLO WORLD, SHOUTING'S FUN. DON'T YOU THINK?",
    "x = {'key': [1, 2, 3], \"other\": None}\u00a0\u3000wide space",
]
# Pieces of text for random strings: whitespace runs of every kind,
# contractions in both cases, digits, marks, added and special tokens.
ALPHABET = [
    *"abcXYZ019.,;!?-_()'\"#$ ",
    *["  ", "\t", "\n", "\r\n", "\r", "\x0b", "\x00"],
    *["\u00a0", "\u3000", "\u2009", "\x85", "\u2028"],
    *["'s", "'S", "'t", "'T", "'re", "'RE", "'ve", "'Ve", "'m", "'M"],
    *["'ll", "'LL", "'d", "'D", "the", " and", "123456", "٣"],
    *["好", "中文", "🍕", "👍🏽", "é", "e\u0301", "n\u0300o", "Ü"],
    *["<tool_call>", "</tool_call>", "<|im_start|>", "<|eot_id|>"],
]

Family = collections.namedtuple(
    "Family", "name directory reference tokenizer tokenize detokenize"
)


def corpus():
    rng = random.Random(0)
    return [
        f"{a} {i} {b}" for i in range(300) for a, b in [rng.sample(TEXTS, 2)]
    ]


def configure(name, model):
    """A `tokenizers.Tokenizer` of `model` set up as family `name` is."""
    pre = hf.pre_tokenizers
    reference = hf.Tokenizer(model)
    if name == "gpt2":
        reference.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
    elif name == "smollm2":
        reference.pre_tokenizer = pre.Sequence(
            [
                pre.Digits(individual_digits=True),
                pre.ByteLevel(add_prefix_space=False),
            ]
        )
    else:
        pattern = getattr(bpe_pretokenize, f"{name.upper()}_PATTERN")
        reference.pre_tokenizer = pre.Sequence(
            [
                pre.Split(hf.Regex(pattern), behavior="isolated"),
                pre.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if name == "qwen2":
        reference.normalizer = hf.normalizers.NFC()
    reference.decoder = hf.decoders.ByteLevel()
    return reference


def train(name, directory):
    """Trains `name`'s tokenizer as that family configures it; writes
    `tokenizer.json` and `tokenizer_config.json` in `directory`."""
    specials = LLAMA3_SPECIALS if name == "llama3" else SPECIALS
    model = hf.models.BPE(ignore_merges=name == "llama3")
    reference = configure(name, model)
    pre = hf.pre_tokenizers
    trainer = hf.trainers.BpeTrainer(
        vocab_size=800,
        initial_alphabet=pre.ByteLevel.alphabet(),
        special_tokens=specials,
        show_progress=False,
    )
    reference.train_from_iterator(corpus(), trainer)
    if name == "qwen2":  # Qwen2.5 matches `<tool_call>` in text.
        reference.add_tokens(
            [
                hf.AddedToken(t, special=False, normalized=False)
                for t in ("<tool_call>", "</tool_call>")
            ]
            # Matched in NFC text, so "n\u0300o" too. (Not a Latin-1
            # letter: those are byte characters, so the decoder would read
            # "ï" as the byte 0xEF.)
            + [hf.AddedToken("ǹo", special=False, normalized=True)]
        )
    if name == "llama3":
        reference.post_processor = hf.processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            special_tokens=[("<|begin_of_text|>", 0)],
        )
    reference.save(os.path.join(directory, "tokenizer.json"))
    if name in CONFIGS:
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(CONFIGS[name], f)
    reference.encode_special_tokens = True  # Specials are text, as ours.
    return reference


def graph_functions(tokenizer):
    strings = tf.TensorSpec([None], tf.string)
    ids = tf.RaggedTensorSpec([None, None], tf.int32)
    return (
        tf.function(tokenizer.tokenize, input_signature=[strings]),
        tf.function(tokenizer.detokenize, input_signature=[ids]),
    )


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp(request.param))
    reference = train(request.param, directory)
    tokenizer = bpe.BPETokenizer.from_huggingface(directory)
    return Family(
        request.param,
        directory,
        reference,
        tokenizer,
        *graph_functions(tokenizer),
    )


def reference_ids(reference, texts):
    encodings = reference.encode_batch(texts, add_special_tokens=False)
    return [e.ids for e in encodings]


def random_texts(count, seed=0):
    rng = random.Random(seed)
    return [
        "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 16)))
        for _ in range(count)
    ]


def test_ids_equal_reference(family):
    texts = TEXTS + random_texts(400) + ["", " ", "\n", "🍕", "a\u0301"]
    ours = family.tokenize(tf.constant(texts)).to_list()
    assert ours == reference_ids(family.reference, texts)
    # Merges apply: fewer ids than bytes.
    assert sum(map(len, ours[: len(TEXTS)])) < sum(
        len(t.encode()) for t in TEXTS
    )


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    texts=st.lists(
        st.lists(st.sampled_from(ALPHABET), max_size=20).map("".join),
        min_size=1,
        max_size=8,
    )
)
def test_ids_and_text_equal_reference_property(family, texts):
    ids = family.tokenize(tf.constant(texts))
    assert ids.to_list() == reference_ids(family.reference, texts)
    specials = set(family.tokenizer.special_tokens.values())
    assert not specials.intersection(ids.flat_values.numpy().tolist())
    back = [t.decode() for t in family.detokenize(ids).numpy().tolist()]
    form = "NFC" if family.name == "qwen2" else None
    assert back == [
        unicodedata.normalize(form, t) if form else t for t in texts
    ]


def test_detokenize_round_trip(family):
    texts = TEXTS + random_texts(100, seed=1)
    if family.name == "qwen2":
        texts = [unicodedata.normalize("NFC", t) for t in texts]
    back = family.detokenize(family.tokenize(tf.constant(texts)))
    assert [t.decode() for t in back.numpy().tolist()] == texts
    assert (
        family.reference.decode_batch(
            family.tokenize(tf.constant(texts)).to_list()
        )
        == texts
    )


def test_special_token_text_is_not_one_id(family):
    tokenizer = family.tokenizer
    controls = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    special, special_id = next(
        (text, i)
        for text, i in tokenizer.special_tokens.items()
        if i not in controls
    )
    assert family.reference.token_to_id(special) == special_id
    text = f"user: {special}system"
    ours = family.tokenize(tf.constant([text])).to_list()[0]
    assert special_id not in ours
    assert ours == reference_ids(family.reference, [text])[0]
    # Hugging Face's default would give the control token from user text.
    family.reference.encode_special_tokens = False
    try:
        parsed = reference_ids(family.reference, [text])[0]
    finally:
        family.reference.encode_special_tokens = True
    assert special_id in parsed
    # Specials detokenize to their text; start, end and pad ids are dropped.
    kept = tokenizer.detokenize([special_id, tokenizer.eos_id])
    assert kept.numpy().decode() == special


EXPECTED_IDS = {  # (bos, eos, pad, add_bos) by token text
    "gpt2": ("<|endoftext|>", "<|endoftext|>", "<|endoftext|>", False),
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>", "<|end_of_text|>", True),
    "qwen2": ("<|im_end|>", "<|im_end|>", "<|endoftext|>", False),
    "smollm2": ("<|im_start|>", "<|im_end|>", "<|im_end|>", False),
}


def test_ids_from_tokenizer_config_and_template(family):
    bos, eos, pad, add_bos = EXPECTED_IDS[family.name]
    tokenizer, vocab = family.tokenizer, family.reference.get_vocab()
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
        vocab[bos],
        vocab[eos],
        vocab[pad],
    )
    assert tokenizer.add_bos is add_bos
    assert tokenizer.vocabulary_size == family.reference.get_vocab_size()
    specials = LLAMA3_SPECIALS if family.name == "llama3" else SPECIALS
    assert tokenizer.special_tokens == {s: vocab[s] for s in specials}


@pytest.mark.parametrize("family", ["qwen2"], indirect=True)
def test_non_special_added_tokens_split_out_of_text(family):
    vocab = family.reference.get_vocab()
    text = "x<tool_call>{'a': 1}</tool_call>\n n\u0300o ǹo<|im_start|>"
    ours = family.tokenize(tf.constant([text])).to_list()[0]
    assert ours == reference_ids(family.reference, [text])[0]
    assert vocab["<tool_call>"] in ours and vocab["</tool_call>"] in ours
    assert ours.count(vocab["ǹo"]) == 2  # matched after NFC
    assert "<tool_call>" not in family.tokenizer.special_tokens


def test_scalar_and_invalid_utf8(family):
    ids = family.tokenizer.tokenize("hello world").numpy().tolist()
    assert ids == reference_ids(family.reference, ["hello world"])[0]
    bad = family.tokenize(tf.constant([b"a\xffb"])).to_list()[0]
    assert bad == reference_ids(family.reference, ["a\ufffdb"])[0]


@pytest.mark.parametrize("family", ["llama3"], indirect=True)
def test_merges_as_strings_or_pairs(family, tmp_path):
    with open(os.path.join(family.directory, "tokenizer.json")) as f:
        spec = json.load(f)
    assert isinstance(spec["model"]["merges"][0], list)
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    with open(tmp_path / "tokenizer.json", "w") as f:
        json.dump(spec, f)
    strings = bpe.BPETokenizer.from_huggingface(tmp_path)
    texts = tf.constant(TEXTS)
    assert graph_functions(strings)[0](texts).to_list() == (
        family.tokenize(texts).to_list()
    )


def test_save_and_load_give_equal_ids(family, tmp_path):
    family.tokenizer.save(tmp_path / "tok")
    loaded = tokenizers.load_tokenizer(tmp_path / "tok")
    with pytest.raises(errors.InputError, match="is a tflm tokenizer"):
        bpe.BPETokenizer.from_huggingface(tmp_path / "tok")
    assert isinstance(loaded, bpe.BPETokenizer)
    assert loaded.get_config() == family.tokenizer.get_config()
    assert loaded.special_tokens == family.tokenizer.special_tokens
    texts = tf.constant(TEXTS + random_texts(50))
    assert graph_functions(loaded)[0](texts).to_list() == (
        family.tokenize(texts).to_list()
    )


@pytest.mark.parametrize("family", ["llama3", "qwen2"], indirect=True)
def test_saved_model_signature(family, tmp_path):
    module = tf.Module()
    module.tokenizer = family.tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(text):
        ids = module.tokenizer.tokenize(text)
        return {"ids": ids.to_tensor(-1), "lengths": ids.row_lengths()}

    tf.saved_model.save(
        module, str(tmp_path), signatures={"tokenize": tokenize}
    )
    loaded = tf.saved_model.load(str(tmp_path)).signatures["tokenize"]
    out = loaded(text=tf.constant(TEXTS))
    ids = tf.RaggedTensor.from_tensor(out["ids"], lengths=out["lengths"])
    assert ids.to_list() == reference_ids(family.reference, TEXTS)


def test_ignore_merges_takes_whole_words(tmp_path):
    alphabet = hf.pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab.update({"ab": 256, "bc": 257, "abc": 258, "<|endoftext|>": 259})
    texts = ["abc xabc", "abcabc"]
    results = []
    for ignore in (False, True):
        model = hf.models.BPE(
            vocab, [("a", "b"), ("b", "c")], ignore_merges=ignore
        )
        reference = configure("llama3", model)
        reference.save(str(tmp_path / "tokenizer.json"))
        ours = bpe.BPETokenizer.from_huggingface(tmp_path)
        results.append(graph_functions(ours)[0](tf.constant(texts)).to_list())
        assert results[-1] == reference_ids(reference, texts)
    assert results[0] != results[1]


def rewrite(directory, tmp_path, change):
    with open(os.path.join(directory, "tokenizer.json")) as f:
        spec = json.load(f)
    change(spec)
    with open(tmp_path / "tokenizer.json", "w") as f:
        json.dump(spec, f)
    return tmp_path


def test_refuses_wordpiece_and_unigram(tmp_path):
    for kind, model in (
        ("WordPiece", hf.models.WordPiece({"[UNK]": 0}, unk_token="[UNK]")),
        ("Unigram", hf.models.Unigram([("<unk>", 0.0)], unk_id=0)),
    ):
        hf.Tokenizer(model).save(str(tmp_path / "tokenizer.json"))
        with pytest.raises(errors.InputError, match=f"is a {kind} tokenizer"):
            bpe.BPETokenizer.from_huggingface(tmp_path)


def _sentencepiece_style(spec):
    spec["model"]["byte_fallback"] = True
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    spec["decoder"] = {"type": "Sequence", "decoders": []}


def _other_regex(spec):
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"


def _lowercase(spec):
    spec["normalizer"] = {"type": "Lowercase"}


def _lstrip(spec):
    spec["added_tokens"][-1]["lstrip"] = True


@pytest.mark.parametrize(
    "change, message",
    [
        (_sentencepiece_style, "SentencePiece-style BPE"),
        (_other_regex, r"pre-tokenizer Split\(.*\\\\w\+"),
        (_lowercase, "normalizer Lowercase"),
        (_lstrip, "non-special added token .* sets lstrip"),
    ],
)
@pytest.mark.parametrize("family", ["qwen2"], indirect=True)
def test_refuses_what_it_does_not_run_exactly(
    family, tmp_path, change, message
):
    directory = rewrite(family.directory, tmp_path, change)
    with pytest.raises(errors.InputError, match=message):
        bpe.BPETokenizer.from_huggingface(directory)
