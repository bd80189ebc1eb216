"""The `tflm` command: a thin layer that parses flags and calls tflm modules.

Each subcommand is a `_add_<name>(subparsers)` function that registers its
parser and sets `func`; heavy imports happen inside the handlers so that
`tflm --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

logger = logging.getLogger("tflm")


class CLIError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def _add_version(subparsers) -> None:
    parser = subparsers.add_parser("version", help="print versions and exit")
    parser.set_defaults(func=_run_version)


def _run_version(args: argparse.Namespace) -> int:
    import keras
    import tensorflow as tf

    import tflm

    print(f"tflm {tflm.__version__}")
    print(f"tensorflow {tf.__version__}")
    print(f"keras {keras.__version__}")
    return 0


_SAMPLE_CHARS = 1_000_000


def _add_tokenizer(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help="train tokenizers")
    commands = parser.add_subparsers(
        dest="tokenizer_command", metavar="COMMAND", required=True
    )
    train = commands.add_parser(
        "train", help="train a SentencePiece tokenizer on text files"
    )
    train.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text files, folders or quoted globs (.txt, .jsonl)",
    )
    train.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        metavar="N",
        help="number of ids, for example 8192 (at least about 300)",
    )
    train.add_argument(
        "--out", required=True, metavar="DIR", help="tokenizer directory"
    )
    train.add_argument(
        "--model-type", choices=("bpe", "unigram"), default="bpe"
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
    train.add_argument("--character-coverage", type=float, default=0.9995)
    train.set_defaults(func=_run_tokenizer_train)


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    import time

    from tflm import data
    from tflm import tokenizers

    out = os.path.abspath(args.out)
    _check_tokenizer_out(out, tokenizers.is_tokenizer_directory)
    files = data.find_files(args.data)
    text_files = [f for f in files if not f.endswith(".jsonl")]
    jsonl_files = [f for f in files if f.endswith(".jsonl")]
    for path in text_files:
        data.check_utf8(path)
    records = None
    if jsonl_files:
        records = data.iter_documents(
            jsonl_files, args.text_format, args.jsonl_field
        )
    start = time.perf_counter()
    tokenizer = tokenizers.SentencePieceTokenizer.train(
        text_files,
        texts=records,
        vocabulary_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
    )
    seconds = time.perf_counter() - start
    _save_atomically(tokenizer, out)
    sample = data.sample_texts(files, _SAMPLE_CHARS, args.jsonl_field)
    ratio = tokenizers.chars_per_token(tokenizer, sample)
    chars = sum(len(text) for text in sample)
    print(f"vocabulary size: {tokenizer.vocabulary_size}")
    print(f"characters per token: {ratio:.2f} (first {chars:,} characters)")
    print(f"training time: {seconds:.1f} s")
    print(f"written to: {out}")
    return 0


def _check_tokenizer_out(out: str, is_tokenizer_directory) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out} is a file; name a folder.")
    if os.path.isdir(out) and os.listdir(out):
        if not is_tokenizer_directory(out):
            raise CLIError(
                f"--out {out} is not empty and holds no tokenizer; name a new "
                "or empty folder, or an existing tokenizer folder to replace."
            )


def _save_atomically(tokenizer, out: str) -> None:
    """Saves into a temp folder beside `out`, then renames it into place."""
    import shutil
    import tempfile

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        tokenizer.save(temp)
        os.chmod(temp, 0o755)
        if os.path.isdir(out):
            old = f"{temp}.old"
            os.rename(out, old)
            os.rename(temp, out)
            shutil.rmtree(old)
        else:
            os.rename(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tflm",
        description="Train, run and serve GPT-style language models.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show debug logs"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_version, _add_tokenizer):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as err:
        print(f"tflm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
