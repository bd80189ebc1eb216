"""Published SentencePiece models: read a transformers directory, and run
the model as transformers runs it.

Llama 2, Mistral and TinyLlama checkpoints ship `tokenizer.model` and
`tokenizer_config.json` with `"tokenizer_class": "LlamaTokenizer"`.
Transformers 5.x (`AutoTokenizer.from_pretrained`) does not run the model
with `sentencepiece`: it rebuilds it as a `tokenizers` BPE (merges ranked by
piece id, byte fallback) and puts spaces as U+2581 with a `Metaspace`
pre-tokenizer (no split) whose `prepend_scheme` comes from the config:

- `LlamaTokenizer`: no normalizer, whatever the model's spec says;
  `"never"` for `add_prefix_space: false`, else `"always"` for `legacy:
  true`, else `"first"` (`legacy` false, null or absent).
- Its generic SentencePiece tokenizer, which it builds when the config
  names no `tokenizer_class` or `config.json`'s `model_type` is `mistral`
  or `mixtral` (it ignores `tokenizer_class` then): with `legacy` true or
  absent it encodes exactly as `sentencepiece` does (the model's normalizer
  and dummy prefix; `prepend_scheme=None` here); with `legacy` false, as
  `LlamaTokenizer` does with `"first"`.

Control pieces, unk and the config's special tokens become added tokens,
split out of the text first. For a byte-fallback BPE model with identity
normalization (all of those checkpoints), `"first"` and `"always"` give
`sentencepiece`'s own `encode(text)` ids, except:

- a text that starts with `" "` or U+2581: `Metaspace` adds its U+2581 only
  to text that does not start with one, SentencePiece's dummy prefix always
  adds one (`" Hello"`: transformers `▁Hello`, sentencepiece `▁▁`, `Hello`);
- special tokens written in the text (`"</s>"`, `"<s>"`, `"<unk>"`):
  transformers gives their ids; sentencepiece, and tflm, read plain text;
- text right after such a token: `"first"` puts no space before it,
  `"always"` does (unless it starts with one). That is all `legacy`
  changes there; a newline is plain text, with no space put after it.

`SentencePieceTokenizer` with a `prepend_scheme` gives transformers' ids:
the model runs without normalization or dummy prefix, `prepend_space` puts
the `Metaspace` space in-graph, and `tokenize_after_special` tokenizes a
template's text that follows a special token. Refused, because transformers
runs them unlike SentencePiece or tflm cannot run them in-graph: unigram
models, models without byte fallback (transformers drops unknown
characters), user-defined pieces, other tokenizer classes, and added tokens
that are not pieces of the model.

`add_bos` and `add_eos` are `add_bos_token` and `add_eos_token`, false when
absent, as in transformers 5.x. Ids: bos, eos and unk are the config's
tokens (strings or `AddedToken` dicts), else the model's pieces;
`bos_token: null` keeps the model's id but turns `add_bos` off, as
transformers does. `pad_id` is the config's `pad_token`, else `eos_id`:
transformers' tokenizer then has no pad token (it ignores a pad piece of the
model) and `generate` pads with eos. `special_tokens` are the model's
control and unknown pieces, the config's special `added_tokens_decoder`
entries and the tokens it names. As in transformers,
`special_tokens_map.json` and `added_tokens.json` are read only when the
config has no `added_tokens_decoder`; `tokenizer.json` is not read.

`detokenize` drops the prefix space, as transformers' `decode` does, so
`detokenize(tokenize(x)) == x` unless `x` holds U+2581 (it comes back as a
space) or, with `"first"` or `"always"`, starts with a space (one is
lost). Special ids other than pad, bos and eos detokenize to `""` (unk to
SentencePiece's ` ⁇ `); transformers writes their text.
"""

from __future__ import annotations

import os
from typing import Any

from sentencepiece import sentencepiece_model_pb2

from tflm import errors
from tflm.tokenizers import hf_files
from tflm.tokenizers import sentencepiece_model as model_lib

MODEL_FILE = hf_files.SENTENCEPIECE_FILE
CONFIG_FILE = hf_files.TOKENIZER_CONFIG_FILE
CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")
# Model types for which transformers 5.x ignores `tokenizer_class` and
# builds its generic SentencePiece tokenizer (absent `tekken.json`).
GENERIC_MODEL_TYPES = ("mistral", "mixtral")
_NAMED = ("bos_token", "eos_token", "unk_token", "pad_token")
_EXTRA = ("additional_special_tokens", "extra_special_tokens")
_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece
_SPECIAL_TYPES = (_PIECE.CONTROL, _PIECE.UNKNOWN)


def huggingface_arguments(
    directory: str | os.PathLike,
) -> tuple[str, dict[str, Any]]:
    """The model path and `SentencePieceTokenizer` arguments for a
    transformers tokenizer directory; see `from_huggingface`.

    Raises:
        InputError: the model is missing, corrupt or of a kind transformers
            runs differently from SentencePiece, or the config adds tokens
            that are not pieces of the model.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, MODEL_FILE)
    if not os.path.isfile(path):
        raise errors.InputError(
            f"{directory} has no {MODEL_FILE}: from_huggingface reads the "
            "SentencePiece model that Llama 2, Mistral and TinyLlama "
            f"checkpoints ship. Download {MODEL_FILE} into the folder."
        )
    with open(path, "rb") as f:
        model = f.read()
    model_lib.load_processor(model, path, f"Download {MODEL_FILE} again.")
    proto = sentencepiece_model_pb2.ModelProto.FromString(model)
    _check_model(proto, path)
    config = _read_config(directory)
    path_config = os.path.join(directory, "config.json")
    model_type = None
    if os.path.isfile(path_config):
        model_type = hf_files.read_json(path_config).get("model_type")
    return path, _Resolver(proto, config, directory, model_type).arguments()


def _check_model(proto, path: str) -> None:
    """Refuses models that transformers tokenizes unlike SentencePiece."""
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise errors.InputError(
            f"{path} is not a BPE model: transformers' LlamaTokenizer runs "
            "every SentencePiece model as BPE merges, so its ids for a "
            "unigram model are not the model's own."
        )
    if not proto.trainer_spec.byte_fallback:
        raise errors.InputError(
            f"{path} has no byte fallback: transformers drops characters "
            "outside its vocabulary where SentencePiece gives <unk>, so "
            "tflm cannot match both."
        )
    user = [p.piece for p in proto.pieces if p.type == _PIECE.USER_DEFINED]
    if user:
        raise errors.InputError(
            f"{path} has user-defined pieces {user[:5]}: transformers splits "
            "the text at them and restarts the space prefix after each, "
            "which tflm does not reproduce in-graph."
        )


def _read_config(directory: str) -> dict[str, Any]:
    """`tokenizer_config.json`, completed from the legacy files as
    transformers does when it has no `added_tokens_decoder`."""
    path = os.path.join(directory, CONFIG_FILE)
    config = hf_files.read_json(path) if os.path.isfile(path) else {}
    if "added_tokens_decoder" in config:
        return config
    path = os.path.join(directory, "special_tokens_map.json")
    if os.path.isfile(path):
        config.update(hf_files.read_json(path))
    path = os.path.join(directory, "added_tokens.json")
    if os.path.isfile(path):
        named = {
            str(hf_files.token_text(config.get(k), k, CONFIG_FILE))
            for k in _NAMED
        }
        config["added_tokens_decoder"] = {
            str(index): {"content": text, "special": text in named}
            for text, index in hf_files.read_json(path).items()
        }
    return config


class _Resolver:
    """Works out ids and special tokens from the model and the config."""

    def __init__(self, proto, config, directory: str, model_type):
        self.proto, self.config, self.directory = proto, config, directory
        self.model_type = model_type
        self.size = len(proto.pieces)
        self.ids = {p.piece: i for i, p in enumerate(proto.pieces)}
        self.special: dict[str, int] = {
            p.piece: i
            for i, p in enumerate(proto.pieces)
            if p.type in _SPECIAL_TYPES
        }
        self.missing: list[str] = []

    def arguments(self) -> dict[str, Any]:
        config = self.config
        prepend_scheme = self._prepend_scheme()
        self._added_tokens()
        spec = self.proto.trainer_spec
        bos = self._named("bos_token", spec.bos_id)
        eos = self._named("eos_token", spec.eos_id)
        pad = self._named("pad_token", -1)
        self._named("unk_token", spec.unk_id)
        for key in _EXTRA:
            extra = config.get(key) or []
            for token in extra.values() if isinstance(extra, dict) else extra:
                self._special(hf_files.token_text(token, key, CONFIG_FILE))
        if self.missing:
            raise errors.InputError(
                f"{self.directory} adds tokens that are not pieces of "
                f"{MODEL_FILE} ({self.size} pieces): {self.missing}. tflm "
                "runs the SentencePiece model in-graph and cannot give it "
                "new ids; remove them from the config or use the base "
                "model's tokenizer."
            )
        for key, value in (("bos_token", bos), ("eos_token", eos)):
            if value is None:
                raise errors.InputError(
                    f"{self.directory}: neither {MODEL_FILE} nor "
                    f"{CONFIG_FILE} names a {key}; set {key} in the config."
                )
        return {
            "escape": False,
            "prepend_scheme": prepend_scheme,
            "add_bos": bool(self._flag("add_bos_token")) and bos[1],
            "add_eos": bool(self._flag("add_eos_token")) and eos[1],
            "special_tokens": self.special,
            "pad_id": eos[0] if pad is None else pad[0],
            "bos_id": bos[0],
            "eos_id": eos[0],
        }

    def _added_tokens(self) -> None:
        """Special added tokens become special tokens. Any other added token
        is refused (transformers splits it out of the text, SentencePiece
        does not) unless it is the model's own special piece."""
        decoder = self.config.get("added_tokens_decoder") or {}
        for index, token in sorted(decoder.items(), key=lambda x: int(x[0])):
            index, text = (
                int(index),
                hf_files.token_text(token, "added_tokens_decoder", CONFIG_FILE),
            )
            special = isinstance(token, dict) and token.get("special", False)
            if text is None:
                raise errors.InputError(
                    f"{CONFIG_FILE}: added_tokens_decoder[{index}] has no "
                    f"content. Received: {token!r}"
                )
            if index >= self.size:
                self.missing.append(f"{index}: {text!r}")
            elif special:
                self.special[text] = index
            elif self.special.get(text) != index:
                self.missing.append(f"{index}: {text!r} (not special)")

    def _special(self, text: str) -> int | None:
        """The id of a token transformers treats as special, if a piece."""
        index = self.special.get(text, self.ids.get(text))
        if index is None:
            self.missing.append(repr(text))
        else:
            self.special[text] = index
        return index

    def _named(self, key: str, own: int) -> tuple[int, bool] | None:
        """(id, whether transformers has the token) for bos, eos, unk or
        pad, or None. A key left out means the model's own piece; `null`
        means no token, though the id stays the model's own."""
        text = hf_files.token_text(self.config.get(key), key, CONFIG_FILE)
        if text is not None:
            index = self._special(text)
            return None if index is None else (index, True)
        if own < 0:
            return None
        return own, key not in self.config

    def _flag(self, key: str, absent: Any = False) -> Any:
        """A config flag: true, false, `null` (None) or `absent`."""
        value = self.config.get(key, absent)
        if value is not absent and value not in (True, False, None):
            raise errors.InputError(
                f"{CONFIG_FILE}: {key} must be true or false. "
                f"Received: {key}={value!r}"
            )
        return value

    def _prepend_scheme(self) -> str | None:
        """The space rule of the tokenizer transformers builds."""
        name, absent = self.config.get("tokenizer_class"), object()
        if name is not None and name not in CLASSES:
            raise errors.InputError(
                f"{self.directory}: tokenizer_class {name!r} is not one of "
                f"{CLASSES}; tflm reproduces only transformers' "
                "LlamaTokenizer for a SentencePiece model."
            )
        legacy = self._flag("legacy", absent)
        if name is not None and self.model_type not in GENERIC_MODEL_TYPES:
            if self.config.get("add_prefix_space") is False:
                return "never"
            return "always" if legacy is True else "first"
        spec = self.proto.normalizer_spec
        if legacy in (True, absent) or not spec.add_dummy_prefix:
            return None  # sentencepiece's own rule
        if spec.precompiled_charsmap or spec.remove_extra_whitespaces:
            raise errors.InputError(
                f"{self.directory}: with legacy false transformers "
                f"normalizes the text as {MODEL_FILE} says but puts the "
                "space prefix its own way; tflm does one or the other."
            )
        return "first"
