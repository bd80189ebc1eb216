"""A tflm tokenizer written as the files `transformers` loads it from.

`write(tokenizer, folder)` writes what `transformers.AutoTokenizer` (5.x)
reads offline to give tflm's `tokenize` ids; `check(tokenizer)` refuses,
before anything is written, what it cannot load exactly. Each kind:

- `GPT2BPETokenizer`: `vocab.json` and `merges.txt`, `GPT2Tokenizer`.
- `BPETokenizer` (Llama 3, Qwen2, SmolLM2): a `tokenizer.json` written by
  hand (the BPE model, pre-tokenizer, normalizer and added tokens, and a
  start token post-processor when `add_bos`), `PreTrainedTokenizerFast`.
- `ByteTokenizer`: a `tokenizer.json` whose BPE model has the 256
  byte-level characters (byte `b` is id `b + 3`) and no merges, after a
  `ByteLevel` pre-tokenizer without regex; `<pad>`, `<s>` and `</s>` are
  ids 0, 1 and 2. `PreTrainedTokenizerFast`.
- `SentencePieceTokenizer` with a `prepend_scheme` (Llama 2, Mistral,
  TinyLlama): `tokenizer.model`, `LlamaTokenizer`, with the `legacy` and
  `add_prefix_space` that give the scheme.
- `SentencePieceTokenizer` without one (tflm-trained): `tokenizer.model`,
  `PreTrainedTokenizerFast`, which transformers 5.x builds from the
  model's own settings (normalizer, dummy prefix, user-defined pieces such
  as tflm's `"\\n"`, byte fallback). Unigram models are refused:
  transformers breaks ties between splits of equal score (`"▁▁" "▁"` or
  `"▁" "▁▁"` for three spaces) otherwise than SentencePiece.

Bos, eos, pad, unk and `special_tokens` are special added tokens named in
`tokenizer_config.json`, so text a chat template renders with their text
gets their ids. There alone transformers differs from tflm's `tokenize`,
which reads such text as plain text; and a tflm-trained SentencePiece
model escapes a literal U+2581 or U+E000 in text, which transformers
cannot, so text holding those characters gets other ids there.
"""

from __future__ import annotations

import os
import tempfile

from sentencepiece import sentencepiece_model_pb2

from tflm import errors
from tflm import tokenizers
from tflm.export import hf_tokenizer_json as tokenizer_json
from tflm.tokenizers import gpt2_bpe
from tflm.tokenizers import hf_files

CONFIG_FILE = hf_files.TOKENIZER_CONFIG_FILE
TOKENIZER_FILE = hf_files.TOKENIZER_FILE
SENTENCEPIECE_FILE = hf_files.SENTENCEPIECE_FILE
# Every file `write` may create, and the legacy ones transformers would
# read over its config: an export replaces them all, and keeps the rest.
FILES = (CONFIG_FILE, TOKENIZER_FILE, SENTENCEPIECE_FILE)
FILES += (gpt2_bpe.VOCABULARY_FILE, gpt2_bpe.MERGES_FILE)
FILES += ("special_tokens_map.json", "added_tokens.json")
FAST = "PreTrainedTokenizerFast"
_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece


def check(tokenizer) -> None:
    """Refuses a tokenizer transformers cannot load to give its ids.

    Raises:
        InputError: naming the tokenizer and what has no counterpart.
    """
    _texts(tokenizer)


def write(tokenizer, folder: str, *, model_max_length: int) -> dict:
    """Writes the tokenizer's files and `tokenizer_config.json` (no chat
    template) into `folder`, which exists.

    Args:
        tokenizer: a tflm tokenizer that `check` accepts.
        folder: the folder to write into.
        model_max_length: the model's context, for the config.

    Returns:
        `generation_config.json`'s `bos_token_id`, `eos_token_id` and
        `pad_token_id` (tflm's ids).

    Raises:
        InputError: as `check`.
    """
    texts = _texts(tokenizer)
    config = _write_model(tokenizer, folder, texts)
    config.update(
        bos_token=texts[tokenizer.bos_id],
        eos_token=texts[tokenizer.eos_id],
        pad_token=texts[tokenizer.pad_id],
        add_bos_token=bool(tokenizer.add_bos),
        add_eos_token=bool(getattr(tokenizer, "add_eos", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    if isinstance(
        tokenizer, tokenizers.ByteTokenizer | tokenizers.SentencePieceTokenizer
    ):
        # transformers runs these through other classes; `tflm import`
        # builds the same tflm tokenizer back from its own record.
        record = tokenizers.base.tokenizer_config(tokenizer)
        if "model_file" in record:  # SentencePiece's, under its HF name.
            record["model_file"] = SENTENCEPIECE_FILE
        config[hf_files.TFLM_TOKENIZER_KEY] = record
    config.setdefault("added_tokens_decoder", {})
    for index in sorted(_special_ids(tokenizer)):
        config["added_tokens_decoder"].setdefault(
            str(index), _added_token(texts[index], special=True)
        )
    hf_files.write_json(os.path.join(folder, CONFIG_FILE), config)
    return dict(
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )


def _special_ids(tokenizer) -> set[int]:
    ids = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    ids |= set(tokenizer.special_tokens.values())
    if isinstance(tokenizer, tokenizers.SentencePieceTokenizer):
        ids.add(tokenizer.unk_id)
    return ids


def _texts(tokenizer) -> dict[int, str]:
    """The text of each special id, checking the tokenizer on the way."""
    name, known = type(tokenizer).__name__, _known_texts(tokenizer)
    texts = {}
    for index in _special_ids(tokenizer):
        if index not in known:
            raise errors.InputError(
                f"the {name}'s special id {index} has no token text, so "
                "transformers cannot name it; give it a token in the "
                "vocabulary."
            )
        texts[index] = known[index]
    for text, index in tokenizer.special_tokens.items():
        if known[index] != text:
            raise errors.InputError(
                f"the {name}'s special token {text!r} is id {index}, whose "
                f"token is {known[index]!r}; transformers names an id by "
                "its token, so rename the special token."
            )
    return texts


def _known_texts(tokenizer) -> dict[int, str]:
    """Each id's token text, where the tokenizer has one."""
    if isinstance(tokenizer, tokenizers.ByteTokenizer):
        return dict(enumerate(tokenizer_json.BYTE_NAMES))
    if isinstance(tokenizer, tokenizers.SentencePieceTokenizer):
        return {i: p.piece for i, p in enumerate(_proto(tokenizer).pieces)}
    if not isinstance(
        tokenizer, tokenizers.GPT2BPETokenizer | tokenizers.BPETokenizer
    ):
        raise errors.InputError(
            f"a {type(tokenizer).__name__} has no transformers counterpart: "
            "only byte, GPT-2, byte-level BPE and SentencePiece tokenizers "
            "export."
        )
    vocabulary = tokenizer.vocabulary
    known = {i: t for t, i in vocabulary.items()}
    for token in tokenizer.get_config().get("added_tokens", []):
        text, index = token["content"], token["id"]
        if vocabulary.get(text, index) != index:
            raise errors.InputError(
                f"the BPETokenizer's added token {text!r} is id {index} but "
                f"{vocabulary[text]} in the vocabulary; transformers gives "
                "one id per text, so drop one of them."
            )
        known[index] = text
    return known


def _proto(tokenizer):
    """The SentencePiece model proto, checked for a transformers reading."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(tokenizer.model_proto)
    spec, what = proto.trainer_spec, None
    if not spec.byte_fallback:
        what = (
            "has no byte fallback: transformers drops characters outside "
            "its vocabulary where SentencePiece gives unk"
        )
    elif spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        what = (
            "is not BPE: transformers breaks ties between equally scored "
            "unigram splits (a run of spaces) otherwise than SentencePiece"
        )
    elif tokenizer.prepend_scheme is not None and any(
        p.type == _PIECE.USER_DEFINED for p in proto.pieces
    ):
        what = "has user-defined pieces, which LlamaTokenizer splits anew"
    if what is not None:
        raise errors.InputError(
            f"the SentencePieceTokenizer's model {what}, so its ids cannot "
            "be written exactly; export a BPE model (model_type='bpe')."
        )
    return proto


def _write_model(tokenizer, folder: str, texts: dict[int, str]) -> dict:
    """Writes the model files; the config's model-specific entries."""
    if isinstance(tokenizer, tokenizers.SentencePieceTokenizer):
        path = os.path.join(folder, SENTENCEPIECE_FILE)
        with open(path, "wb") as f:
            f.write(tokenizer.model_proto)
        scheme = tokenizer.prepend_scheme
        if scheme is None:  # The model's own rules.
            return dict(tokenizer_class=FAST, unk_token=texts[tokenizer.unk_id])
        return dict(
            tokenizer_class="LlamaTokenizer",
            unk_token=texts[tokenizer.unk_id],
            legacy=scheme == "always",
            add_prefix_space=scheme != "never",
        )
    if isinstance(tokenizer, tokenizers.GPT2BPETokenizer):
        for name, content in _asset_files(tokenizer).items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(content)
        eos = texts[tokenizer.eos_id]
        return dict(tokenizer_class="GPT2Tokenizer", unk_token=eos)
    if isinstance(tokenizer, tokenizers.ByteTokenizer):
        spec = tokenizer_json.byte()
    else:
        spec = tokenizer_json.bpe(tokenizer, _special_ids(tokenizer))
    hf_files.write_json(os.path.join(folder, TOKENIZER_FILE), spec)
    decoder = {
        str(t["id"]): _added_token(t["content"], t["special"], t["normalized"])
        for t in spec["added_tokens"]
    }
    return dict(tokenizer_class=FAST, added_tokens_decoder=decoder)


def _asset_files(tokenizer) -> dict[str, bytes]:
    """The tokenizer's own files (`tokenizer.files`) by name, as its
    `write_files` writes them."""
    with tempfile.TemporaryDirectory() as temp:
        tokenizer.write_files(temp)
        out = {}
        for name in tokenizer.files:
            with open(os.path.join(temp, name), "rb") as f:
                out[name] = f.read()
        return out


def _added_token(content: str, special: bool, normalized: bool = False):
    """An `added_tokens_decoder` entry of `tokenizer_config.json`."""
    token = dict(content=content, lstrip=False, normalized=normalized)
    return dict(token, rstrip=False, single_word=False, special=special)
