"""Exit codes, error lines and a quiet terminal, for every command."""

import json
import os
import re
import subprocess
import sys

import pytest

from tflm import cli
from tflm.cli import quiet
from tflm.models import model_dir

# What C++ logging looks like: absl/glog lines and SentencePiece's LOG(...).
NOISE = re.compile(r"^[IWE]\d{4} |LOG\(", re.MULTILINE)


def tflm(*argv, cwd=None, **kwargs):
    """Runs `python -m tflm ARGV` the way a user's shell does."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "tflm", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        **kwargs,
    )


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`tflm quickstart` on the built-in corpus, shortened."""
    out = tmp_path_factory.mktemp("quickstart")
    done = tflm(
        "quickstart",
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--vocabulary-size",
        "400",
        "--max-new-tokens",
        "6",
    )
    return out, done


def test_quickstart_runs_on_the_builtin_corpus_quietly(quickstart):
    out, done = quickstart
    assert done.returncode == 0, done.stderr
    assert not NOISE.search(done.stderr), done.stderr
    for step in ("[0/4]", "[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in done.stdout
    assert "held-out perplexity" in done.stdout
    assert "bits per character" in done.stdout
    served = done.stdout.split("[4/4]")[1].splitlines()[1:4]
    assert len(served) == 3
    assert all(" -> " in line and "b64" not in line for line in served)
    assert "docker run --rm -p 8501:8501 -v " in done.stdout
    assert "curl -s localhost:8501/v1/models/tflm:predict" in done.stdout
    assert model_dir.is_model_dir(out / "model")
    assert os.path.isfile(out / "serving" / "1" / "saved_model.pb")


@pytest.mark.parametrize(
    "argv",
    [
        ["version"],
        ["generate", "{model}", "--prompt", "The", "--max-new-tokens", "4"],
        ["eval", "{model}", "--data", "{data}"],
        ["export", "{model}", "--out", "{tmp}/serving"],
        [
            "train",
            "--data",
            "{data}",
            "--preset",
            "tiny",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--out",
            "{tmp}/m",
        ],
        [
            "tokenizer",
            "train",
            "--data",
            "{data}",
            "--vocabulary-size",
            "400",
            "--out",
            "{tmp}/tok",
        ],
    ],
    ids=lambda argv: argv[0],
)
def test_every_command_keeps_cpp_logging_off_the_terminal(
    quickstart, tmp_path, argv
):
    out, _ = quickstart
    data = str(out / "data" / "python-docs.jsonl")
    fill = {"model": str(out / "model"), "data": data, "tmp": str(tmp_path)}
    done = tflm(*(arg.format(**fill) for arg in argv))
    assert done.returncode == 0, done.stderr
    assert not NOISE.search(done.stderr), done.stderr


def test_finetune_and_chat_keep_cpp_logging_off_the_terminal(
    quickstart, tmp_path
):
    out, _ = quickstart
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"say {w}", "completion": w} for w in "abcdefgh"]
    pairs.write_text("\n".join(json.dumps(row) for row in rows))
    tuned = str(tmp_path / "tuned")
    done = tflm(
        "finetune",
        str(out / "model"),
        "--data",
        str(pairs),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--out",
        tuned,
    )
    assert done.returncode == 0, done.stderr
    assert not NOISE.search(done.stderr), done.stderr
    done = tflm(
        "chat", tuned, "--max-new-tokens", "3", input="hi\n/reset\nyo\n"
    )
    assert done.returncode == 0, done.stderr
    assert not NOISE.search(done.stderr), done.stderr


def test_verbose_shows_what_the_filter_hides(quickstart):
    out, _ = quickstart
    done = tflm(
        "-v",
        "generate",
        str(out / "model"),
        "--prompt",
        "x",
        "--max-new-tokens",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert NOISE.search(done.stderr)


def test_a_closed_pipe_ends_quietly(quickstart):
    out, _ = quickstart
    prompts = [arg for i in range(200) for arg in ("--prompt", f"p{i}")]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tflm",
            "generate",
            str(out / "model"),
            *prompts,
            "--max-new-tokens",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # like `| head` before the first line
    _, err = process.communicate(timeout=600)
    assert process.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "nothing-here")
    assert cli.main(["generate", missing, "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tflm generate: error: ")
    assert len(err.strip().splitlines()) == 1
    assert missing in err


def _boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line")


def test_a_bug_exits_1_with_a_pointer_to_debug(monkeypatch, capsys):
    monkeypatch.setattr(model_dir, "load_model", _boom)
    assert cli.main(["generate", "m", "--prompt", "a"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err
    assert "second line" not in err
    assert "--debug" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback(monkeypatch, capsys, where):
    monkeypatch.setattr(model_dir, "load_model", _boom)
    argv = ["generate", "m", "--prompt", "a"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "_boom" in err


@pytest.mark.parametrize(
    "command",
    [
        "quickstart",
        "tokenizer train",
        "train",
        "eval",
        "generate",
        "export",
        "import",
        "finetune",
        "chat",
        "version",
    ],
)
def test_every_help_ends_with_an_example(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out.rstrip()
    example = help_text.split("example:\n")[-1]
    assert "example:" in help_text
    assert example.strip().startswith("tflm ")


@pytest.mark.parametrize(
    "line, hidden",
    [
        (b"E0000 00:00:1.1 1 util.cc:131] oneDNN supports DT_INT64 only", True),
        (b"I0000 00:00:1796115938.02 5234 port.cc:153] oneDNN custom", True),
        (b"W1201 10:00:00.000000 1 x.cc:1] warning", True),
        (b"normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty.", True),
        (b"F0000 00:00:1.1 1 check.cc:1] Check failed: x", False),
        (b"Epoch 1/1 - loss: 2.3", False),
        (b"Error: I0000 is in the middle", False),
    ],
)
def test_noise_filter(line, hidden):
    assert quiet.is_noise(line) is hidden
