"""The tokenizer of a GGUF file: what llama.cpp's converter writes.

GPT-2 and byte-level BPE tokenizers (`GPT2BPETokenizer`, `BPETokenizer`)
are llama.cpp's `gpt2` model: byte-level tokens, their types, the merges,
and `tokenizer.ggml.pre`, llama.cpp's name for the same pre-tokenizer
(`gpt-2`, `smollm`, `llama-bpe`, `qwen2`; llama.cpp applies no NFC
normalizer, as for a converted Qwen2). SentencePiece BPE models are its
`llama` model: pieces, scores and types, and `add_space_prefix` from the
model's dummy prefix or the prepend scheme (tflm's escape of a literal
U+2581 in text has no counterpart there). Ids beyond the tokenizer's are
`[PAD<i>]`, unused. Bos, eos, pad and `special_tokens` are control tokens.
The byte tokenizer is refused: no llama.cpp tokenizer gives its ids.
"""

from __future__ import annotations

from tflm import errors
from tflm import tokenizers
from tflm.export import hf_chat_template

# tflm pre-tokenizer -> llama.cpp's `tokenizer.ggml.pre` of the same split.
PRETOKENIZERS = {
    "gpt2": "gpt-2",
    "gpt2_digits": "smollm",
    "llama3": "llama-bpe",
    "qwen2": "qwen2",
}
# GGUF token types (llama.cpp's), the numbering SentencePiece uses too.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PAD_SCORE = -1000.0  # Ids beyond the tokenizer's, as the converter pads.


def write_keys(writer, model, vocabulary_size: int) -> None:
    """Adds the `tokenizer.*` keys of `model`'s tokenizer and its chat
    template to `writer` (a `gguf.GGUFWriter`).

    Raises:
        InputError: a tokenizer llama.cpp cannot run to give its ids
            (naming it), one with more ids than the model, or a chat
            template tflm cannot write as Jinja.
    """
    tokenizer = model.tokenizer
    kind = type(tokenizer).__name__
    if tokenizer.vocabulary_size > vocabulary_size:
        raise errors.InputError(
            f"the {kind} has {tokenizer.vocabulary_size} ids but the model "
            f"{vocabulary_size}; a GGUF file names each id once, so give "
            "the model the tokenizer it was trained with."
        )
    if isinstance(tokenizer, tokenizers.SentencePieceTokenizer):
        tokens, types = _sentencepiece(writer, tokenizer, vocabulary_size)
        writer.add_unk_token_id(tokenizer.unk_id)
    elif isinstance(
        tokenizer, tokenizers.GPT2BPETokenizer | tokenizers.BPETokenizer
    ):
        tokens, types = _bpe(writer, tokenizer, vocabulary_size)
    else:
        raise errors.InputError(
            f"a {kind} has no llama.cpp counterpart: llama.cpp's tokenizers "
            "(SentencePiece, byte-level BPE) do not give its ids. Export a "
            "model with a SentencePiece or BPE tokenizer."
        )
    for index in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id):
        if types[index] != UNKNOWN:
            types[index] = CONTROL
    for index in tokenizer.special_tokens.values():
        types[index] = CONTROL
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(bool(tokenizer.add_bos))
    writer.add_add_eos_token(bool(getattr(tokenizer, "add_eos", False)))
    more = [i for i in getattr(model, "eos_ids", ()) if i != tokenizer.eos_id]
    if more:  # A reply's end other than eos (Llama 3's <|eot_id|>).
        writer.add_eot_token_id(more[0])
    template = getattr(model, "template", None)
    if template:
        writer.add_chat_template(hf_chat_template.jinja(template, tokenizer))


def _sentencepiece(writer, tokenizer, size: int):
    """llama.cpp's `llama` model: pieces, scores and types of a BPE model
    (user-defined pieces are normal ones, as the converter reads them)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(tokenizer.model_proto)
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        raise errors.InputError(
            "the SentencePieceTokenizer's model is not BPE: llama.cpp's "
            "llama tokenizer merges pieces as BPE does, so a unigram "
            "model's ids would differ. Export a BPE model (model_type='bpe')."
        )
    tokens = [f"[PAD{i}]" for i in range(size)]
    scores, types = [PAD_SCORE] * size, [UNUSED] * size
    for index, piece in enumerate(proto.pieces):
        tokens[index], scores[index] = piece.piece, piece.score
        types[index] = NORMAL if piece.type == USER_DEFINED else piece.type
    scheme = tokenizer.prepend_scheme
    if scheme is None:
        space = proto.normalizer_spec.add_dummy_prefix
    else:
        space = scheme != "never"
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_scores(scores)
    writer.add_add_space_prefix(bool(space))
    return tokens, types


def _bpe(writer, tokenizer, size: int):
    """llama.cpp's `gpt2` model: byte-level tokens, merges, pre-tokenizer."""
    added = []
    pre = "gpt-2"
    if isinstance(tokenizer, tokenizers.BPETokenizer):
        added = tokenizer.get_config()["added_tokens"]
        pre = PRETOKENIZERS[tokenizer.pretokenizer]
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for token, index in tokenizer.vocabulary.items():
        tokens[index], types[index] = token, NORMAL
    for token in added:
        tokens[token["id"]] = token["content"]
        types[token["id"]] = CONTROL if token["special"] else USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_merges(tokenizer.merges)
    return tokens, types
