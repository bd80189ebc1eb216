"""Every tflm tokenizer written as Hugging Face files loads in transformers
with tflm's ids, special tokens included, and imports back unchanged."""

import os

import pytest

from tflm import errors
from tflm import tokenizers
from tflm.export import hf_tokenizer
from tflm.importers import hf_tokenizer as importer

transformers = pytest.importorskip(
    "transformers", reason="transformers (the test extra) is not installed"
)
pytest.importorskip("torch", reason="torch (the test extra) is not installed")

import gpt2_files  # noqa: E402
import llama_files  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好。我们去公园散步吧!红楼梦",
    "I love pizza 🍕🍕 and cats 🐱! 👍🏽 🚀",
    "double  spaces   and\ttabs\t\there",
    "lines\nand\n\nblank lines\n",
    " leading space, trailing spaces  ",
    "  two leading, \n\t mixed \r\n end",
    "café naïve 2024 1,000 x = 1 [INST] hello [/INST]",
]
MAX_LENGTH = 64
# Kinds whose tflm `detokenize` gives every text of TEXTS back.
ROUND_TRIPS = {"byte", "trained", "gpt2"}
ROUND_TRIPS |= {"llama3", "qwen2", "smollm2", "plain_bpe", "gapped_bpe"}
IMPORTED = ("gpt2", "llama3", "qwen2", "smollm2", "first", "always", "never")
# "plain_bpe": bos, eos and pad in the vocabulary, not added tokens;
# "gapped_bpe": an added token's id is not the one after the vocabulary's;
# "generic": a Mistral model, run as `sentencepiece` runs it.
KINDS = ("byte", "trained", "plain_bpe", "gapped_bpe", "generic", *IMPORTED)
# Whether each kind starts a text with bos (`add_special_tokens=True`).
ADD_BOS = dict(llama3=True, first=True, always=True, never=True, generic=True)


def _source(kind: str, folder: str):
    """A tflm tokenizer of `kind`, made from files written in `folder`."""
    os.makedirs(folder, exist_ok=True)
    if kind == "byte":
        return tokenizers.ByteTokenizer()
    if kind == "trained":
        return _trained("bpe")
    if kind in ("plain_bpe", "gapped_bpe"):
        vocabulary, merges = gpt2_files.train_bpe()
        end = vocabulary["<|endoftext|>"]
        start = dict(content="<|im_start|>", id=len(vocabulary) + 5)
        return tokenizers.BPETokenizer(
            vocabulary,
            merges,
            bos_id=end,
            eos_id=end,
            pad_id=end,
            added_tokens=[dict(start, special=True)] * (kind == "gapped_bpe"),
        )
    if kind == "gpt2":
        gpt2_files.write_tokenizer(folder)
    elif kind in ("llama3", "qwen2", "smollm2"):
        llama_files.write_bpe(folder, kind)
    else:
        style = {"first": "llama2", "always": "mistral"}.get(kind, "zephyr")
        style = "mistral" if kind == "generic" else style
        llama_files.write_sentencepiece(
            folder, llama_files.sentencepiece_model(), style
        )
        if kind == "generic":
            llama_files.write_json(
                folder, "config.json", {"model_type": "mistral"}
            )
        if kind == "never":
            config = llama_files.read_json(folder, "tokenizer_config.json")
            config["add_prefix_space"] = False
            llama_files.write_json(folder, "tokenizer_config.json", config)
    return importer.load(folder)


def _trained(model_type: str):
    return tokenizers.SentencePieceTokenizer.train(
        texts=llama_files.corpus(),
        vocabulary_size=360,
        model_type=model_type,
        num_threads=1,
    )


@pytest.fixture(scope="module", params=KINDS)
def exported(request, tmp_path_factory):
    """`(kind, tflm tokenizer, transformers tokenizer, folder, returned)`."""
    kind = request.param
    source = tmp_path_factory.mktemp(f"{kind}_source")
    tokenizer = _source(kind, str(source))
    folder = str(tmp_path_factory.mktemp(f"{kind}_export"))
    hf_tokenizer.check(tokenizer)
    returned = hf_tokenizer.write(
        tokenizer, folder, model_max_length=MAX_LENGTH
    )
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    return kind, tokenizer, hf, folder, returned


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.tokenize(text).numpy().tolist()


def test_transformers_gives_tflm_ids_and_text(exported):
    kind, tokenizer, hf, _, _ = exported
    if kind in ("trained", "generic"):  # Run as `sentencepiece` runs it.
        assert tokenizer.prepend_scheme is None
        assert tokenizer.escape is (kind == "trained")
    for text in TEXTS:
        ids = _ids(tokenizer, text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        ours = tokenizer.detokenize(ids).numpy().decode()
        assert hf.decode(ids) == ours, text
        if kind in ROUND_TRIPS:
            assert ours == text


def test_special_tokens_are_tflm_ids(exported):
    kind, tokenizer, hf, _, returned = exported
    assert returned == dict(
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (
        tokenizer.bos_id,
        tokenizer.eos_id,
        tokenizer.pad_id,
    )
    for key in ("bos", "eos", "pad"):
        text = getattr(hf, f"{key}_token")
        index = getattr(tokenizer, f"{key}_id")
        assert hf.convert_tokens_to_ids(text) == index
        assert hf(text, add_special_tokens=False)["input_ids"] == [index]
    for text, index in tokenizer.special_tokens.items():
        assert hf(text, add_special_tokens=False)["input_ids"] == [index]
    # Text a chat template renders: the bos text is bos, the rest tflm's.
    rendered = hf(f"{hf.bos_token}Hi there", add_special_tokens=False)
    rest = tokenizer.tokenize("Hi there")
    if hasattr(tokenizer, "tokenize_after_special"):
        rest = tokenizer.tokenize_after_special(["Hi there"])[0]
    assert rendered["input_ids"] == [tokenizer.bos_id, *list(rest.numpy())]
    assert tokenizer.add_bos is ADD_BOS.get(kind, False)
    start = [tokenizer.bos_id] if tokenizer.add_bos else []
    end = [tokenizer.eos_id] if getattr(tokenizer, "add_eos", False) else []
    assert hf(TEXTS[0])["input_ids"] == start + _ids(tokenizer, TEXTS[0]) + end
    assert hf.model_max_length == MAX_LENGTH


def test_written_files_are_all_named_in_files(exported):
    _, _, _, folder, _ = exported
    written = set(os.listdir(folder))
    assert written <= set(hf_tokenizer.FILES)
    assert hf_tokenizer.CONFIG_FILE in written


@pytest.mark.parametrize("kind", IMPORTED)
def test_importing_the_export_gives_the_same_tokenizer(kind, tmp_path):
    tokenizer = _source(kind, str(tmp_path / "source"))
    folder = tmp_path / "export"
    folder.mkdir()
    hf_tokenizer.write(tokenizer, str(folder), model_max_length=MAX_LENGTH)
    again = importer.load(str(folder))
    assert type(again) is type(tokenizer)
    for text in TEXTS:
        assert _ids(again, text) == _ids(tokenizer, text), text
    keys = ("bos_id", "eos_id", "pad_id", "add_bos", "special_tokens")
    assert {k: getattr(again, k) for k in keys} == {
        k: getattr(tokenizer, k) for k in keys
    }
    if isinstance(tokenizer, tokenizers.SentencePieceTokenizer):
        assert again.prepend_scheme == tokenizer.prepend_scheme == kind


def test_a_model_transformers_runs_otherwise_is_refused(tmp_path):
    unigram = _trained("unigram")
    llama_style = tokenizers.SentencePieceTokenizer(
        unigram.model_proto, escape=False, prepend_scheme="first"
    )
    for tokenizer in (unigram, llama_style):
        with pytest.raises(errors.InputError, match="is not BPE"):
            hf_tokenizer.check(tokenizer)
        with pytest.raises(errors.InputError, match="is not BPE"):
            hf_tokenizer.write(tokenizer, str(tmp_path), model_max_length=8)
    assert os.listdir(tmp_path) == []


def test_a_tokenizer_of_another_kind_is_refused():
    class Words(tokenizers.Tokenizer):
        pass

    with pytest.raises(errors.InputError, match="Words has no transformers"):
        hf_tokenizer.check(Words())
