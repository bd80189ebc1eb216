"""Every flag and argument of every `tflm` command says what it is for."""

import argparse

import pytest

from tflm.cli import app


def _arguments(parser, command=("tflm",)):
    """`(command, action)` for every argument of `parser` and its
    subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _arguments(subparser, (*command, name))
        else:
            yield " ".join(command), action


ARGUMENTS = list(_arguments(app.build_parser()))


@pytest.mark.parametrize(
    "command, action",
    ARGUMENTS,
    ids=[f"{c} {'/'.join(a.option_strings) or a.dest}" for c, a in ARGUMENTS],
)
def test_every_argument_has_help_text(command, action):
    assert action.help and action.help.strip(), (
        f"{command} {action.option_strings or action.dest} has no help text"
    )


def test_every_command_is_covered():
    commands = {command for command, _ in ARGUMENTS}
    assert {"tflm train", "tflm eval", "tflm tokenizer train"} <= commands
    assert len(commands) >= 11
