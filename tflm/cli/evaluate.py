"""`tflm eval`: loss, perplexity and bits per character, as JSON."""

from __future__ import annotations

import argparse

from tflm.cli import common


def add(subparsers) -> None:
    from tflm.train import config

    parser = common.add_command(
        subparsers,
        "eval",
        help="loss, perplexity and bits per character of a model, as JSON; "
        "on prompt/completion data also exact match, chrF, BLEU and ROUGE-L",
        example="tflm eval models/book --data heldout.txt",
    )
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="the model directory to score"
    )
    parser.add_argument(
        "--data", nargs="+", required=True, metavar="PATH", help="text files"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="sequences (or prompts) per batch (default: 8)",
    )
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
        help="which part of --data to score: the held-out part that tflm "
        "train validates on, the rest, or all (default: all; use the "
        "run's --validation-fraction and --text-format)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        metavar="X",
        help="the share of --data held out, as the run was trained with "
        "(default: 0.1, tflm train's)",
    )
    parser.add_argument(
        "--text-format",
        choices=config.TEXT_FORMATS,
        default="document",
        help="what a document is in .txt files, as the run was trained with "
        "(default: document)",
    )
    parser.add_argument(
        "--jsonl-field",
        default="text",
        metavar="NAME",
        help="text field of .jsonl lines (default: text)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        metavar="N",
        help="on prompt/completion data: the longest greedy completion",
    )
    parser.add_argument(
        "--prompt-field",
        default="prompt",
        metavar="NAME",
        help="prompt field of prompt/completion .jsonl (default: prompt)",
    )
    parser.add_argument(
        "--completion-field",
        default="completion",
        metavar="NAME",
        help="completion field of prompt/completion .jsonl (default: "
        "completion)",
    )
    parser.add_argument(
        "--precision",
        choices=config.PRECISIONS,
        default=None,
        help="dtype policy to score in (default: the model's)",
    )
    parser.add_argument(
        "--strategy",
        choices=config.STRATEGIES,
        default="auto",
        help="distribution strategy (default: auto, as tflm train picks)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from tflm.train import evaluate
    from tflm.train import task_metrics

    if task_metrics.is_task_data(args.data):
        result = task_metrics.evaluate_task(
            args.model_dir,
            args.data,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            prompt_field=args.prompt_field,
            completion_field=args.completion_field,
        )
    else:
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
    print(json.dumps(result, allow_nan=False))
    return 0
