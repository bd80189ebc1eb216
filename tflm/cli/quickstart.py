"""`tflm quickstart`: raw text to served answers in one command."""

from __future__ import annotations

import argparse
import os
import time

from tflm.cli import common


def add(subparsers) -> None:
    from tflm import quickstart

    defaults = quickstart.QuickstartConfig()
    parser = common.add_command(
        subparsers,
        "quickstart",
        help="raw text to served answers in one command",
        description="Train a SentencePiece tokenizer and a small model on "
        "your text (default: the Python documentation that ships with "
        "Python, so it runs offline), evaluate it, export it for TF Serving, "
        "and answer prompts from the export loaded the way TF Serving loads "
        "it (XLA off). Running it again reuses the trained model.",
        example="tflm quickstart\n"
        "tflm quickstart --data my-book.txt --out runs/book --steps 2000",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        default=(),
        metavar="PATH",
        help="your text files, folders or quoted globs (default: the Python "
        "documentation topics of this Python)",
    )
    parser.add_argument(
        "--out",
        default=defaults.out,
        metavar="DIR",
        help=f"where the model and the export go (default: {defaults.out})",
    )
    for name in ("preset", "steps", "vocabulary_size", "batch_size"):
        value = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(value),
            default=value,
            help=f"default: {value}",
        )
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="a prompt to answer; repeat for more",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=defaults.max_new_tokens
    )
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from tflm import quickstart

    return quickstart.QuickstartConfig(
        out=args.out,
        data=tuple(args.data),
        preset=args.preset,
        steps=args.steps,
        vocabulary_size=args.vocabulary_size,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        prompts=tuple(args.prompt),
    )


def _show(prompts, answers) -> None:
    for prompt, answer in zip(prompts, answers, strict=True):
        print(f"  {prompt!r} -> {' '.join((prompt + answer).split())!r}")


def run(args: argparse.Namespace) -> int:
    from tflm import export
    from tflm import quickstart
    from tflm.cli import export as export_cli
    from tflm.models import causal_lm
    from tflm.models import model_dir
    from tflm.train import evaluate
    from tflm.train import fit

    start = time.perf_counter()
    config = _config(args)  # every check before the first step
    data = config.data
    if not data:
        data = (
            quickstart.write_default_corpus(os.path.join(args.out, "data")),
        )
        print(f"[0/4] corpus: the Python documentation topics -> {data[0]}")
    train = quickstart.train_config(config, data)
    print(
        f"[1/4] training a {config.vocabulary_size}-id SentencePiece "
        f"tokenizer and the {config.preset} preset for {config.steps} steps "
        f"-> {train.out}"
    )
    fit.train(train)
    scores = evaluate.evaluate(train.out, data, split="validation")
    print(
        f"      held-out perplexity {scores['perplexity']:.2f}, "
        f"{scores['bits_per_character']:.3f} bits per character"
    )
    model = model_dir.load_model(causal_lm.CausalLM, train.out)
    prompts = list(config.prompts or quickstart.DEFAULT_PROMPTS)
    print("[2/4] in-process, greedy:")
    _show(prompts, model.generate(prompts, config.max_new_tokens))
    base = os.path.join(args.out, "serving")
    path = export.export(model, base, overwrite=True, version=1)
    print(f"[3/4] exported a SavedModel for TF Serving: {path}")
    print("[4/4] served (loaded as TF Serving loads it, XLA off; sampled):")
    _show(
        prompts,
        quickstart.serve_answers(path, prompts, config.max_new_tokens),
    )
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Next:")
    print(f"  tflm generate {train.out} --prompt 'your text' --stream")
    for command in export_cli.serve_commands(base):
        print(f"  {command}")
    return 0
