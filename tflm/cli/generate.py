"""`tflm generate`: continue prompts with a trained model."""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections.abc import Iterator

from tflm.cli import common

# Decode rows per `generate` call: prompts are read, generated and printed
# this many rows at a time, so memory stays flat however long stdin is.
BATCH_ROWS = 64
# Decode steps after which the loop runs under XLA: compiling it costs about
# what this many plain-graph steps lose to it on the small presets on a CPU,
# so a run is never much more than twice as slow as the better choice.
XLA_AFTER_STEPS = 3000
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|[nrt\\])")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def add(subparsers) -> None:
    parser = common.add_command(
        subparsers,
        "generate",
        help="continue prompts with a trained model",
        description="Print the continuation of each prompt. Prompts come "
        "from --prompt, or from standard input, one per line of UTF-8 text, "
        f"answered {BATCH_ROWS} rows at a time as they come (any number of "
        "lines runs in flat memory).",
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
        help="end a continuation where TEXT appears (TEXT is not printed); "
        "1 to 64 bytes of UTF-8, and \\n, \\t, \\r, \\\\ and \\uXXXX are read "
        "as escapes, so --stop '\\n\\n' stops at a blank line; repeat for up "
        "to 8",
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
        help="always run the plain graph, as TF Serving does (default: "
        f"XLA when the run's first two batches decode {XLA_AFTER_STEPS:,} "
        "steps or more, where its compile pays off; chosen once, so every "
        "prompt of a run decodes the same way)",
    )
    parser.set_defaults(func=run)


def unescape(text: str) -> str:
    r"""`--stop`'s escapes read: `\n`, `\r`, `\t`, `\\` and `\uXXXX`; any
    other backslash stays as typed.

    Example:
    >>> unescape(r"\n\n") == "\n\n"
    True
    >>> unescape(r"a\\n\u00e9\d")
    'a\\né\\d'
    """
    return _ESCAPE.sub(
        lambda m: _ESCAPES.get(m[1]) or chr(int(m[1][1:], 16)), text
    )


def _stops(args: argparse.Namespace) -> list[str]:
    from tflm import errors

    stops = [unescape(stop) for stop in args.stop]
    for given, stop in zip(args.stop, stops, strict=True):
        try:
            stop.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.InputError(
                f"--stop {errors.shorten(given)} is not valid UTF-8 text "
                "(a lone \\uD800-\\uDFFF escape, or bytes that are not "
                "UTF-8); pass the character itself or its \\uXXXX escape."
            ) from None
    return stops


def _prompt_lines(args: argparse.Namespace) -> Iterator[str]:
    """The prompts of `--prompt`, else of standard input, one at a time."""
    from tflm import errors

    if args.prompt is None:
        yield from common.stdin_lines()
        return
    for i, prompt in enumerate(args.prompt):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            given = prompt[:40].encode("utf-8", "surrogateescape")
            more = f"… ({len(prompt):,} characters)" * (len(prompt) > 40)
            raise errors.InputError(
                f"prompt {i + 1} is not valid UTF-8 text. Received: "
                f"{given!r}{more}."
            ) from None
        yield prompt


def _batch_size(args: argparse.Namespace, context: int) -> int:
    """Prompts per call: `BATCH_ROWS` decode rows, within the size caps."""
    from tflm.generation import spec

    rows = min(BATCH_ROWS, spec.MAX_DECODE_CELLS // context)
    per_prompt = max(args.num_return_sequences, args.num_beams, 1)
    return max(1, rows // per_prompt)


def _use_xla(args: argparse.Namespace, steps: int) -> bool:
    """XLA for the whole run when the work in sight at its start (`steps`,
    new tokens summed over its first two calls) reaches `XLA_AFTER_STEPS`,
    unless `--no-xla`: a short run does not repay the compile, and one
    choice per run keeps a prompt's text independent of its place."""
    return not args.no_xla and steps >= XLA_AFTER_STEPS


def run(args: argparse.Namespace) -> int:
    from tflm.errors import InputError
    from tflm.models import causal_lm
    from tflm.models import model_dir

    stops = _stops(args)
    if args.stream and args.num_beams != 1:
        raise InputError(
            "--stream is not supported with beam search. Received: "
            f"--num-beams {args.num_beams}."
        )
    lines = _prompt_lines(args)
    first = next(lines, None)
    if first is None:
        raise InputError("no prompt: pass --prompt TEXT or lines on stdin.")
    if args.stream and next(lines, None) is not None:
        raise InputError(
            "--stream takes exactly one prompt. Received: more than one."
        )
    model = model_dir.load_model(causal_lm.CausalLM, args.model_dir)
    if args.weights:
        from tflm.models import weights

        model = weights.convert_weights(model, args.weights)
    settings = _settings(args, stops)
    if args.stream:
        for piece in model.stream(first, args.max_new_tokens, **settings):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    _generate_all(model, itertools.chain([first], lines), args, settings)
    return 0


def _settings(args: argparse.Namespace, stops: list[str]) -> dict:
    return dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=stops,
        max_length=args.max_length,
        min_new_tokens=args.min_new_tokens,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        num_return_sequences=args.num_return_sequences,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        early_stopping=args.early_stopping,
    )


def _generate_all(model, lines, args, settings) -> None:
    """Generates and prints batch by batch, in the prompts' order."""
    n = args.num_return_sequences
    context = model.backbone.max_sequence_length
    size = _batch_size(args, context)
    batches = iter(lambda: list(itertools.islice(lines, size)), [])
    head = next(batches)
    following = next(batches, [])
    labelled = n > 1 or len(head) + len(following) > 1
    new = args.max_new_tokens
    if new is None:
        new = args.max_length or min(64, context - 1)
    done = 0
    jit_compile = _use_xla(args, new * (1 + bool(following)))
    for batch in itertools.chain(
        [head], [following] * bool(following), batches
    ):
        outputs = model.generate(
            batch,
            args.max_new_tokens,
            jit_compile=jit_compile,
            **settings,
        )
        outputs = [outputs] if isinstance(outputs, str) else outputs
        for i, text in enumerate(outputs):
            if labelled:
                label = f"{done + i // n + 1}" + (
                    f".{i % n + 1}" if n > 1 else ""
                )
                print(f"--- {label}: {batch[i // n]}")
            print(text)
        sys.stdout.flush()
        done += len(batch)
