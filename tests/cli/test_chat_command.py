"""`tflm chat`: a streaming chat driven through standard input."""

import io

import numpy as np
import pytest

from tflm import cli
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


def _chat(path, lines, capsys, monkeypatch, *flags):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(lines)))
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


def test_a_model_without_template_is_refused(dirs, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert cli.main(["chat", dirs[1]]) == 2
    assert "no chat template" in capsys.readouterr().err


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["chat", "--help"])
    assert "example:\n  tflm chat" in capsys.readouterr().out
