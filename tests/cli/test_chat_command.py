"""`tflm chat`: a streaming chat driven through standard input."""

import io
import os
import pty
import select
import subprocess
import sys
import time

import numpy as np
import pytest

from tflm import cli
from tflm.cli import chat as chat_command
from tflm.models import CausalLM
from tflm.models import model_dir
from tflm.tokenizers import ByteTokenizer
from tflm.tokenizers import templates

NEW = "6"


def _vary(lm):
    rng = np.random.default_rng(0)
    for v in lm.weights:
        if len(v.shape) == 2:
            v.assign(rng.normal(0, 1.0, v.shape).astype("float32"))
    return lm


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    lm = _vary(
        CausalLM.from_preset(
            "tiny", vocabulary_size=259, max_sequence_length=64
        )
    )
    root = tmp_path_factory.mktemp("chat")
    chat, plain = str(root / "chat"), str(root / "plain")
    metadata = {"template": templates.TEMPLATE}
    model_dir.save(lm, ByteTokenizer(), chat, metadata=metadata)
    model_dir.save(lm, ByteTokenizer(), plain)
    return chat, plain


def _stdin(monkeypatch, data: bytes):
    """`data` as standard input, set up as Python does in the C locale."""
    stdin = io.TextIOWrapper(io.BytesIO(data), errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", stdin)


def _chat(path, lines, capsys, monkeypatch, *flags):
    _stdin(monkeypatch, "".join(lines).encode())
    argv = ["chat", path, "--max-new-tokens", NEW, *flags]
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def _reply(lm, history):
    return lm.generate(history, int(NEW), jit_compile=False)


def test_history_is_kept_and_reset_clears_it(dirs, capsys, monkeypatch):
    lm = CausalLM.from_preset(dirs[0])
    system = [{"role": "system", "content": "Be brief."}]
    first = [*system, {"role": "user", "content": "hi"}]
    r1 = _reply(lm, first)
    second = [
        *first,
        {"role": "assistant", "content": r1},
        {"role": "user", "content": "more"},
    ]
    fresh = [*system, {"role": "user", "content": "more"}]
    with_history, without = _reply(lm, second), _reply(lm, fresh)
    assert with_history != without  # the history changes the reply
    flags = ("--system", "Be brief.")
    out = _chat(dirs[0], ["hi\n", "more\n"], capsys, monkeypatch, *flags)
    assert out == f"{r1}\n{with_history}\n"
    lines = ["hi\n", "/reset\n", "more\n"]
    out = _chat(dirs[0], lines, capsys, monkeypatch, *flags)
    assert out == f"{r1}\n{without}\n"


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"hi\nb\xffd\n", "line 2 is not UTF-8 text"),
        ("hi\n".encode("utf-16"), "line 1 holds a NUL byte"),
    ],
)
def test_binary_stdin_exits_2(dirs, capsys, monkeypatch, data, expected):
    """Binary input once ended in `internal error: ValueError`."""
    _stdin(monkeypatch, data)
    assert cli.main(["chat", dirs[0], "--max-new-tokens", NEW]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    # The turns before the bad line are answered.
    assert captured.out.endswith("\n") == data.startswith(b"hi\n")


def _read_until(fd, marker: bytes, seconds: float) -> bytes:
    got, deadline = b"", time.monotonic() + seconds
    while marker not in got:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        assert ready, f"no {marker!r} within {seconds} s; got {got!r}"
        try:
            got += os.read(fd, 4096)
        except OSError:  # the terminal closed: the command ended
            raise AssertionError(f"ended before {marker!r}: {got!r}") from None
    return got


def test_prompt_shows_in_a_terminal(dirs):
    """As a person sees it: `you> ` appears before anything is typed (it
    went to descriptor 2, which the log filter held until a newline)."""
    leader, follower = pty.openpty()
    argv = [sys.executable, "-m", "tflm", "chat", dirs[0]]
    child = subprocess.Popen(
        [*argv, "--max-new-tokens", NEW],
        stdin=follower, stdout=follower, stderr=follower,
        start_new_session=True,
    )  # fmt: skip
    os.close(follower)
    try:
        _read_until(leader, chat_command.PROMPT.encode(), 300)
        os.write(leader, b"hi\n")
        reply = _read_until(leader, chat_command.PROMPT.encode(), 120)
        os.write(leader, b"\x04")  # Ctrl-D: leave
        assert child.wait(timeout=120) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(leader)
    assert b"hi" in reply  # the echo of the typed line, then the reply


def test_a_model_without_template_is_refused(dirs, capsys, monkeypatch):
    _stdin(monkeypatch, b"hi\n")
    assert cli.main(["chat", dirs[1]]) == 2
    assert "no chat template" in capsys.readouterr().err


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["chat", "--help"])
    assert "example:\n  tflm chat" in capsys.readouterr().out
