import json
import math
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import train_helpers

from tflm import cli

corpus = train_helpers.corpus


def _train_argv(corpus, out, **overrides):
    flags = train_helpers.tiny_config(corpus, out, steps=4, **overrides)
    argv = ["train"]
    for name, value in flags.items():
        argv.append("--" + name.replace("_", "-"))
        argv.extend(value if isinstance(value, list) else [str(value)])
    return argv


@pytest.fixture(scope="module")
def model_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    assert cli.main(_train_argv(corpus, out)) == 0
    return str(out)


def test_train_prints_a_summary(model_dir, corpus, capsys):
    assert cli.main(_train_argv(corpus, model_dir)) == 0
    assert "already trained to step 4" in capsys.readouterr().out


def test_an_identical_rerun_says_one_line(model_dir, corpus, capsys, caplog):
    capsys.readouterr()
    assert cli.main(_train_argv(corpus, model_dir)) == 0
    out, err = capsys.readouterr()
    assert out == f"already trained to step 4: {model_dir}\n"
    said = err + caplog.text
    assert "nothing to do" not in said and "Resuming with" not in said


def test_eval_prints_loss_perplexity_and_bits_per_character(
    model_dir, corpus, capsys
):
    argv = ["eval", model_dir, "--data", corpus, "--text-format", "paragraph"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {
        "loss",
        "perplexity",
        "bits_per_character",
        "tokens",
        "characters",
    }
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    with open(corpus, encoding="utf-8") as f:
        paragraphs = f.read().split("\n\n")
    assert result["characters"] == sum(len(p) for p in paragraphs)
    # Byte tokens: one per byte of each paragraph, plus its end-of-text id.
    tokens = sum(len(p.encode()) + 1 for p in paragraphs)
    expected = result["loss"] * tokens / result["characters"] / math.log(2)
    assert result["bits_per_character"] == pytest.approx(expected, rel=1e-6)
    assert result["tokens"] == tokens // 17 * 16


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(preset="huge"), "Unknown preset"),
        (dict(batch_size=7, accumulation_steps=2), "multiple of"),
    ],
)
def test_train_errors_exit_2(corpus, tmp_path, capsys, overrides, message):
    argv = _train_argv(corpus, tmp_path / "model", **overrides)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_unknown_strategy_is_a_usage_error(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(_train_argv(corpus, tmp_path / "m", strategy="gpus"))
    assert exit_info.value.code == 2
    assert "invalid choice: 'gpus'" in capsys.readouterr().err


def test_malformed_tf_config_exits_2(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": ')
    assert cli.main(_train_argv(corpus, tmp_path / "model")) == 2
    assert "TF_CONFIG is not valid JSON" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_out_with_user_files_exits_2_and_keeps_them(corpus, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert cli.main(_train_argv(corpus, tmp_path)) == 2
    assert "no tflm model" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_incompatible_model_dir_exits_2(model_dir, corpus, capsys):
    argv = _train_argv(corpus, model_dir, preset="nano-char")
    assert cli.main(argv) == 2
    assert "another architecture" in capsys.readouterr().err


def test_eval_of_a_folder_that_is_not_a_model(corpus, tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path), "--data", corpus]) == 2
    assert "config.json is missing" in capsys.readouterr().err


def test_ctrl_c_in_a_terminal_ends_the_progress_line_and_says_what_was_kept(
    corpus, tmp_path
):
    """As a person sees it: the progress line on a terminal, then Ctrl-C."""
    out = tmp_path / "model"
    argv = _train_argv(corpus, out)[1:]
    argv[argv.index("--steps") + 1] = "100000"
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "tflm", "train", *argv],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=train_helpers.subprocess_env(COLUMNS="200"),
    )
    os.close(follower)
    metrics = out / "logs" / "metrics.jsonl"
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 0.2)[0]:
            output += os.read(leader, 65536)
        # Past the first checkpoint (step 3) and into the next chunk.
        if metrics.exists() and b"steps 4-6 of 100000: step " in output:
            break
    child.send_signal(signal.SIGINT)
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # The child closed the terminal.
            break
        if not chunk:
            break
        output += chunk
    assert child.wait(timeout=60) == 130
    os.close(leader)
    text = output.decode()
    assert "\rsteps 1-3 of 100000: step " in text
    said = re.search(r"(?:^|\n)interrupted at step (\d+) of 100000\. ", text)
    assert said, text[-2000:]
    kept = re.search(
        r"keeps step (\d+), its last checkpoint: run the same "
        r"command again to resume from step \1\.",
        text,
    )
    assert kept and int(kept[1]) % 3 == 0 and int(kept[1]) <= int(said[1])
    assert "\x1b" not in text and "\b" not in text
