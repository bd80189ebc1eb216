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
        "and answer prompts (the openings of held-out lines of your text) "
        "from the export loaded the way TF Serving loads it (XLA off). "
        "Running it again reuses the trained model.",
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
    parser.add_argument(
        "--preset",
        default=defaults.preset,
        metavar="NAME",
        help=f"architecture preset (default: {defaults.preset})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=defaults.steps,
        metavar="N",
        help=f"optimizer updates (default: {defaults.steps})",
    )
    parser.add_argument(
        "--vocabulary-size",
        type=int,
        default=None,
        metavar="N",
        help="SentencePiece ids (default: sized to your text: the "
        "characters that cover 99.95%% of it plus 261 fixed pieces, plus a "
        "quarter, rounded up to a multiple of 256, and at least "
        f"{quickstart.MIN_VOCABULARY_SIZE:,}; about 5,000 for a Chinese "
        "novel)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        metavar="N",
        help=f"global batch, in sequences (default: {defaults.batch_size})",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="a prompt to answer; repeat for more (default: the first words "
        "of three held-out lines of the text)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=defaults.max_new_tokens,
        metavar="N",
        help=f"tokens answered per prompt (default: {defaults.max_new_tokens})",
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
    vocabulary_size = config.vocabulary_size
    sized = ""
    if vocabulary_size is None:
        vocabulary_size, characters = quickstart.vocabulary_size_for(data)
        sized = f" (sized to the text's {characters:,} characters)"
    train = quickstart.train_config(config, data, vocabulary_size)
    print(
        f"[1/4] training a {vocabulary_size:,}-id SentencePiece tokenizer"
        f"{sized} and the {config.preset} preset for {config.steps} steps "
        f"-> {train.out}"
    )
    fit.train(train)
    scores = evaluate.evaluate(train.out, data, split="validation")
    print(
        f"      held-out perplexity {scores['perplexity']:.2f}, "
        f"{scores['bits_per_character']:.3f} bits per character"
    )
    model = model_dir.load_model(causal_lm.CausalLM, train.out)
    prompts = list(config.prompts or quickstart.corpus_prompts(data))
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
