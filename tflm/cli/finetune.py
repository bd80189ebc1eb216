"""`tflm finetune`: teach a model a task from prompt/completion or chat
examples; rerunning resumes it."""

from __future__ import annotations

import argparse

from tflm.cli import common


def add(subparsers) -> None:
    from tflm.train import config

    parser = common.add_command(
        subparsers,
        "finetune",
        help="fine-tune a model directory or a checkpoint on task "
        "examples; rerunning resumes it",
        description=(
            "Fine-tune PARENT (a model directory or a checkpoint directory "
            "that `tflm import` reads, never modified) on .jsonl examples of "
            '{"prompt", "completion"} or {"messages": [...]} chat turns, '
            "with the loss on the completions only, and write a new model "
            "directory that records its parent and template. A share of the "
            "examples is held out for validation, and the best weights seen "
            "are the result."
        ),
        example="tflm finetune models/base --data pairs.jsonl --epochs 3 "
        "--out models/tuned [--lora-rank 8]",
    )
    parser.add_argument(
        "parent",
        metavar="PARENT",
        help="a model directory, or a checkpoint directory `tflm import` reads",
    )
    config.add_arguments(parser, command=config.FINETUNE_ONLY)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tflm.train import config
    from tflm.train import fit

    result = fit.train(
        config.from_namespace(args, init_from=args.parent, data_format="task")
    )
    if result.start_step == result.step:
        print(f"already fine-tuned to step {result.step}: {result.directory}")
        return 0
    print(f"fine-tuned steps {result.start_step + 1}-{result.step}")
    if result.validation_loss is not None:
        print(f"validation loss: {result.validation_loss:.4f}")
    print(f"written to: {result.directory}")
    return 0
