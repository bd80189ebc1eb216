"""`tflm train`: train a model from text; rerunning resumes it."""

from __future__ import annotations

import argparse

from tflm.cli import common


def add(subparsers) -> None:
    from tflm.train import config

    parser = common.add_command(
        subparsers,
        "train",
        help="train a model; rerunning the same command resumes it",
        description="Train a GPT-style model on text files and write a model "
        "directory. Checkpoints go to --out; running the same command again "
        "continues from the last one, and does nothing once finished.",
        example="tflm train --data book.txt --preset nano-char "
        "--tokenizer byte --steps 2000 --out models/book",
    )
    config.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tflm.train import config
    from tflm.train import fit

    result = fit.train(config.from_namespace(args))
    if result.start_step == result.step:
        print(f"already trained to step {result.step}: {result.directory}")
        return 0
    print(f"trained steps {result.start_step + 1}-{result.step}")
    if result.validation_loss is not None:
        print(f"validation loss: {result.validation_loss:.4f}")
    print(f"written to: {result.directory}")
    return 0
