"""`tflm generate`: continue prompts with a trained model."""

from __future__ import annotations

import argparse
import sys

from tflm.cli import common


def add(subparsers) -> None:
    parser = common.add_command(
        subparsers,
        "generate",
        help="continue prompts with a trained model",
        description="Print the continuation of each prompt. Prompts come "
        "from --prompt, or from standard input, one per line.",
        example='tflm generate models/book --prompt "ROMEO:" --temperature '
        "0.8 --top-p 0.95 --stream",
    )
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="the model directory to run"
    )
    parser.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a prompt; repeat for a batch",
    )
    common.sampling_flags(parser)
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop string (any length, not printed); repeat for several",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        metavar="N",
        help="prompt + new tokens (instead of --max-new-tokens)",
    )
    parser.add_argument(
        "--min-new-tokens",
        type=int,
        default=0,
        metavar="N",
        help="ban the end-of-text and stop ids before N new tokens "
        "(default: 0)",
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="1 is off"
    )
    parser.add_argument(
        "--no-repeat-ngram-size", type=int, default=0, help="0 is off"
    )
    parser.add_argument(
        "--num-return-sequences",
        type=int,
        default=1,
        metavar="N",
        help="samples per prompt (copy j uses seed + j)",
    )
    parser.add_argument(
        "--num-beams",
        type=int,
        default=1,
        metavar="N",
        help="beam search with N beams (1: the ordinary loop); prints the "
        "best --num-return-sequences beams",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        metavar="X",
        help="beam score = sum of log-probs / length**X (as Hugging Face)",
    )
    parser.add_argument(
        "--early-stopping",
        action="store_true",
        help="end a prompt's beam search once it has N finished beams",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="print text as it is produced (one prompt)",
    )
    parser.add_argument(
        "--weights",
        choices=("float32", "bfloat16", "int8"),
        default=None,
        help="run the weights in this type (default: as saved)",
    )
    parser.add_argument(
        "--no-xla",
        action="store_true",
        help="run the plain graph (as TF Serving does)",
    )
    parser.set_defaults(func=run)


def _prompts(args: argparse.Namespace) -> list[str]:
    from tflm.errors import InputError

    prompts = args.prompt
    if prompts is None:
        try:
            prompts = [line.rstrip("\n") for line in sys.stdin]
        except UnicodeDecodeError as err:
            raise InputError(
                f"standard input is not UTF-8 text ({err.reason} at byte "
                f"{err.start}); convert it, e.g. with iconv -t UTF-8."
            ) from None
    for i, prompt in enumerate(prompts):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"prompt {i + 1} is not valid UTF-8 text. Received: "
                f"{prompt.encode('utf-8', 'surrogateescape')!r}."
            ) from None
    if not prompts:
        raise InputError("no prompt: pass --prompt TEXT or lines on stdin.")
    if args.stream and len(prompts) != 1:
        raise InputError(
            f"--stream takes exactly one prompt. Received: {len(prompts)}."
        )
    return prompts


def run(args: argparse.Namespace) -> int:
    from tflm.models import causal_lm
    from tflm.models import model_dir

    prompts = _prompts(args)
    model = model_dir.load_model(causal_lm.CausalLM, args.model_dir)
    if args.weights:
        from tflm.models import weights

        model = weights.convert_weights(model, args.weights)
    settings = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        max_length=args.max_length,
        min_new_tokens=args.min_new_tokens,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        num_return_sequences=args.num_return_sequences,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        early_stopping=args.early_stopping,
    )
    if args.stream and args.num_beams != 1:
        from tflm.errors import InputError

        raise InputError(
            "--stream is not supported with beam search. Received: "
            f"--num-beams {args.num_beams}."
        )
    if args.stream:
        for piece in model.stream(prompts[0], args.max_new_tokens, **settings):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    outputs = model.generate(
        prompts, args.max_new_tokens, jit_compile=not args.no_xla, **settings
    )
    n = args.num_return_sequences
    outputs = [outputs] if isinstance(outputs, str) else outputs
    for i, text in enumerate(outputs):
        if len(outputs) > 1:
            label = f"{i // n + 1}" + (f".{i % n + 1}" if n > 1 else "")
            print(f"--- {label}: {prompts[i // n]}")
        print(text)
    return 0
