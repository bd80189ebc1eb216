"""`tflm import`: turn a checkpoint into a tflm model directory."""

from __future__ import annotations

import argparse

from tflm.cli import common


def add(subparsers) -> None:
    parser = common.add_command(
        subparsers,
        "import",
        help="turn a checkpoint into a tflm model directory",
        description="Import a Hugging Face checkpoint directory of GPT-2, "
        "Llama (2, 3.x, SmolLM2, TinyLlama), Qwen2 or Mistral (config.json, "
        "model.safetensors or its shards, the tokenizer files), or a "
        "keras-hub GPT-2 preset directory. The checkpoint's chat template "
        "is recognised and kept. Nothing is downloaded.",
        example="tflm import SmolLM2-135M-Instruct/ --out models/smollm2",
    )
    parser.add_argument(
        "path", metavar="PATH", help="the checkpoint directory (read only)"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="MODEL_DIR",
        help="the tflm model directory to write",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model directory already in --out",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        default=None,
        metavar="N",
        help="run a rotary model (Llama, Qwen2, Mistral) at this context "
        "(default: its max_position_embeddings, or its sliding window)",
    )
    parser.add_argument(
        "--chat-template",
        choices=("chatml", "llama3", "mistral", "zephyr", "tflm", "none"),
        default=None,
        help="the chat format to render conversations in, instead of "
        "recognising the checkpoint's chat template; `none` keeps no "
        "template (text prompts are continued as they are, as for a base "
        "model)",
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
    out = importers.import_checkpoint(
        args.path,
        args.out,
        overwrite=args.overwrite,
        max_context=args.max_context,
        chat_template=args.chat_template,
        **overrides,
    )
    seconds = time.perf_counter() - start
    print(f"imported {args.path} -> {out} ({seconds:.1f} s)")
    return 0
