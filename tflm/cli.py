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
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a tokenizer already in --out (other files stay)",
    )
    train.set_defaults(func=_run_tokenizer_train)


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    import time

    from tflm import data
    from tflm import tokenizers

    out = tokenizers.storage.check_target(args.out, overwrite=args.overwrite)
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
    out = tokenizers.save(tokenizer, out, overwrite=args.overwrite)
    sample = data.sample_texts(files, _SAMPLE_CHARS, args.jsonl_field)
    ratio = tokenizers.chars_per_token(tokenizer, sample)
    chars = sum(len(text) for text in sample)
    print(f"vocabulary size: {tokenizer.vocabulary_size}")
    print(f"characters per token: {ratio:.2f} (first {chars:,} characters)")
    print(f"training time: {seconds:.1f} s")
    print(f"written to: {out}")
    return 0


def _add_train(subparsers) -> None:
    from tflm.train import config as train_config

    parser = subparsers.add_parser(
        "train",
        help="train a model; rerunning the same command resumes it",
        description="Train a GPT-style model on text files and write a model "
        "directory. Checkpoints go to --out; running the same command again "
        "continues from the last one, and does nothing once finished.",
    )
    train_config.add_arguments(parser)
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from tflm.train import config as train_config
    from tflm.train import fit

    result = fit.train(train_config.from_namespace(args))
    if result.start_step == result.step:
        print(f"already trained to step {result.step}: {result.directory}")
        return 0
    print(f"trained steps {result.start_step + 1}-{result.step}")
    if result.validation_loss is not None:
        print(f"validation loss: {result.validation_loss:.4f}")
    print(f"written to: {result.directory}")
    return 0


def _add_eval(subparsers) -> None:
    from tflm.train import config as train_config

    parser = subparsers.add_parser(
        "eval",
        help="loss, perplexity and bits per character of a model, as JSON",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument(
        "--data", nargs="+", required=True, metavar="PATH", help="text files"
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="N")
    parser.add_argument(
        "--sequence-length",
        type=int,
        default=None,
        metavar="N",
        help="tokens per sequence (default: the model's context)",
    )
    parser.add_argument(
        "--split",
        choices=("all", "train", "validation"),
        default="all",
        help="which documents of --data to score (default: all)",
    )
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument(
        "--text-format", choices=train_config.TEXT_FORMATS, default="document"
    )
    parser.add_argument("--jsonl-field", default="text")
    parser.add_argument(
        "--precision", choices=train_config.PRECISIONS, default=None
    )
    parser.add_argument(
        "--strategy", choices=train_config.STRATEGIES, default="auto"
    )
    parser.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from tflm.train import evaluate

    result = evaluate.evaluate(
        args.model_dir,
        args.data,
        batch_size=args.batch_size,
        sequence_length=args.sequence_length,
        split=args.split,
        validation_fraction=args.validation_fraction,
        text_format=args.text_format,
        jsonl_field=args.jsonl_field,
        precision=args.precision,
        strategy=args.strategy,
    )
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tflm",
        description="Train, run and serve GPT-style language models.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show debug logs"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from tflm import commands

    for add in (
        _add_version,
        _add_tokenizer,
        _add_train,
        _add_eval,
        commands.add_generate,
        commands.add_export,
        commands.add_import,
        commands.add_quickstart,
    ):
        add(subparsers)
    return parser


def _quiet_tensorflow() -> None:
    """Imports TensorFlow with its start-up chatter hidden.

    TensorFlow's C++ start-up lines (oneDNN, CUDA probing, absl's notice)
    ignore `TF_CPP_MIN_LOG_LEVEL`, so standard error is pointed at a
    temporary file during the import and replayed only if the import fails.
    Python-side TensorFlow logging (SavedModel notices) is raised to ERROR.
    """
    import tempfile

    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing logs too
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


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
    if not args.verbose:
        _quiet_tensorflow()
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"tflm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
