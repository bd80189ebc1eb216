"""`tflm chat`: an interactive, streaming chat with a fine-tuned model."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator

from tflm.cli import common

PROMPT = "you> "
RESET = "/reset"


def add(subparsers) -> None:
    parser = common.add_command(
        subparsers,
        "chat",
        help="chat with a fine-tuned model in the terminal",
        description="Chat with a model fine-tuned on chat or prompt/"
        "completion data (its model directory records the template). Each "
        "line you type is a user turn; the reply streams as it is made and "
        f"the conversation is kept. {RESET} starts over; Ctrl-D leaves.",
        example='tflm chat models/assistant --system "Answer briefly." '
        "--temperature 0.7 --top-p 0.9",
    )
    parser.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="a model directory with a chat template (fine-tuned or imported)",
    )
    parser.add_argument(
        "--system",
        metavar="TEXT",
        default=None,
        help="a system turn that opens every conversation",
    )
    common.sampling_flags(parser)
    parser.set_defaults(func=run)


def _opening(system: str | None) -> list[dict]:
    return [] if not system else [{"role": "system", "content": system}]


def run(args: argparse.Namespace) -> int:
    from tflm.errors import InputError
    from tflm.models import causal_lm
    from tflm.models import model_dir

    model = model_dir.load_model(causal_lm.CausalLM, args.model_dir)
    if model.template is None:
        raise InputError(
            f"{args.model_dir} has no chat template (its config.json records "
            "none): only models made by `tflm finetune` can chat. Use `tflm "
            "generate` to continue text."
        )
    settings = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    history = _opening(args.system)
    for line in _user_lines():
        if line.strip() == RESET:
            history = _opening(args.system)
            continue
        history.append({"role": "user", "content": line})
        pieces = []
        for piece in model.stream(history, args.max_new_tokens, **settings):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(pieces)})
    return 0


def _user_lines() -> Iterator[str]:
    """The user's turns: lines typed at the prompt in a terminal, else the
    lines of standard input.

    Raises:
        InputError: piped input that is not UTF-8 text (typed input that is
            not gets the message and the prompt again: the conversation is
            kept).
    """
    from tflm.errors import InputError

    if not sys.stdin.isatty():
        yield from common.stdin_lines()
        return
    try:
        # Line editing, and `input` writes its prompt to stdout. Without
        # readline it writes it to descriptor 2, which the log filter holds
        # until a newline: the prompt is then written here instead.
        import readline  # noqa: F401

        prompt = PROMPT
    except ImportError:
        prompt = ""
    for number in itertools.count(1):
        if not prompt:
            sys.stdout.write(PROMPT)
            sys.stdout.flush()
        try:
            typed = input(prompt).encode("utf-8", "surrogateescape")
        except EOFError:
            sys.stdout.write("\n")
            return
        except UnicodeDecodeError as err:
            typed = err.object
        try:
            yield common.text_line(typed, number)
        except InputError as err:
            print(f"tflm chat: {err}", file=sys.stderr)
