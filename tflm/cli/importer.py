"""`tflm import`: turn a GPT-2 checkpoint into a tflm model directory."""

from __future__ import annotations

import argparse

from tflm.cli import common


def add(subparsers) -> None:
    parser = common.add_command(
        subparsers,
        "import",
        help="turn a GPT-2 checkpoint into a tflm model directory",
        description="Import a Hugging Face GPT-2 directory (config.json, "
        "model.safetensors, vocab.json, merges.txt) or a keras-hub GPT-2 "
        "preset directory. Nothing is downloaded.",
        example="tflm import gpt2/ --out models/gpt2",
    )
    parser.add_argument("path", metavar="PATH")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model directory already in --out",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="dropout for fine-tuning (default: the checkpoint's)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from tflm import importers

    overrides = {} if args.dropout is None else {"dropout": args.dropout}
    start = time.perf_counter()
    out = importers.import_checkpoint(args.path, args.out, **overrides)
    seconds = time.perf_counter() - start
    print(f"imported {args.path} -> {out} ({seconds:.1f} s)")
    return 0
