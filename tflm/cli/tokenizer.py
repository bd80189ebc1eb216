"""`tflm tokenizer train`: a SentencePiece tokenizer for your corpus."""

from __future__ import annotations

import argparse
import os

from tflm.cli import common


def add(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenizer", help="train tokenizers", parents=[common.SHARED]
    )
    commands = parser.add_subparsers(
        dest="tokenizer_command", metavar="COMMAND", required=True
    )
    train = common.add_command(
        commands,
        "train",
        help="train a SentencePiece tokenizer on text files",
        example="tflm tokenizer train --data corpus/ --vocabulary-size 8192 "
        "--out tok/",
    )
    train.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text files, folders or quoted globs (.txt, .jsonl)",
    )
    train.add_argument(
        "--vocabulary-size",
        type=int,
        required=True,
        metavar="N",
        help="number of ids, for example 8192: at least 261 (256 byte "
        "pieces and 5 special ones) plus the characters that cover the text "
        "(--character-coverage), a few thousand for Chinese",
    )
    train.add_argument(
        "--out", required=True, metavar="DIR", help="tokenizer directory"
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the tokenizer already in --out",
    )
    train.add_argument(
        "--model-type",
        choices=("bpe", "unigram"),
        default="bpe",
        help="SentencePiece's algorithm (default: bpe)",
    )
    train.add_argument(
        "--text-format",
        choices=("document", "paragraph", "line"),
        default="document",
        help="how .jsonl records are split (text is trained on by line)",
    )
    train.add_argument(
        "--jsonl-field", default="text", help="text field of .jsonl lines"
    )
    train.add_argument(
        "--character-coverage",
        type=float,
        default=0.9995,
        metavar="X",
        help="share of the text's characters that get pieces of their own, "
        "most frequent first; the rarest fall back to bytes (default: "
        "0.9995, which suits Chinese and Japanese; 1.0 for small alphabets)",
    )
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import time

    from tflm import tokenizers
    from tflm.data import tokenizer_corpus

    out = os.path.abspath(args.out)
    out = tokenizers.storage.check_target(out, overwrite=args.overwrite)
    start = time.perf_counter()
    tokenizer = tokenizer_corpus.train_sentencepiece(
        args.data,
        vocabulary_size=args.vocabulary_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        text_format=args.text_format,
        jsonl_field=args.jsonl_field,
    )
    seconds = time.perf_counter() - start
    out = tokenizers.save(tokenizer, out, overwrite=args.overwrite)
    ratio, chars = tokenizer_corpus.characters_per_token(
        tokenizer, args.data, args.jsonl_field
    )
    print(f"vocabulary size: {tokenizer.vocabulary_size}")
    print(f"characters per token: {ratio:.2f} (first {chars:,} characters)")
    print(f"training time: {seconds:.1f} s")
    print(f"written to: {out}")
    return 0
