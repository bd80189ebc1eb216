"""`tflm chat`: an interactive, streaming chat with a fine-tuned model."""

from __future__ import annotations

import argparse
import sys

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
    interactive = sys.stdin.isatty()
    history = _opening(args.system)
    while True:
        line = _read(interactive)
        if line is None:
            break
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
    if interactive:
        sys.stdout.write("\n")
    return 0


def _read(interactive: bool) -> str | None:
    """The next line of standard input, or `None` at its end."""
    from tflm.errors import InputError

    try:
        if interactive:
            return input(PROMPT)
        line = sys.stdin.readline()
    except EOFError:
        return None
    except UnicodeDecodeError as err:
        raise InputError(
            f"standard input is not UTF-8 text ({err.reason}); convert it, "
            "e.g. with iconv -t UTF-8."
        ) from None
    return line.rstrip("\n") if line else None
