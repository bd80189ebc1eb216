"""`tflm generate`'s input: prompts streamed from stdin in batches, text
that is not UTF-8, `--stop` (escapes, its cap, a templated model, no new
tokens), and the README's command through bash."""

import io
import os
import re
import select
import subprocess
import sys

import numpy as np
import pytest

from tflm import cli
from tflm.cli import generate
from tflm.generation import spec
from tflm.models import CausalLM
from tflm.models import model_dir as model_dir_lib
from tflm.tokenizers import ByteTokenizer
from tflm.tokenizers import templates

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def _always(lm, token_id):
    """`lm` made to predict `token_id` after any input: the final norm
    outputs ones, and only that id's (tied) embedding is large."""
    lm.backbone.get_layer("final_norm").gamma.assign(np.zeros(8, "float32"))
    lm.backbone.get_layer("final_norm").beta.assign(np.ones(8, "float32"))
    embeddings = lm.backbone.token_embedding.embeddings
    table = embeddings.numpy()
    table[token_id] = 10.0
    embeddings.assign(table)
    return lm


def _tiny():
    return CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=32
    )


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """`plain`: a text model; `chat`: templated; `mute`: templated, its
    reply starts with its end id; `newlines`: always says a newline."""
    root = tmp_path_factory.mktemp("generate")
    template = {"template": templates.TEMPLATE}
    eos = ByteTokenizer().eos_id
    newline = int(ByteTokenizer().tokenize(["\n"]).flat_values[0])
    made = {
        "plain": (_tiny(), None),
        "chat": (_tiny(), template),
        "mute": (_always(_tiny(), eos), template),
        "newlines": (_always(_tiny(), newline), None),
    }
    paths = {}
    for name, (lm, metadata) in made.items():
        paths[name] = str(root / name)
        model_dir_lib.save(lm, ByteTokenizer(), paths[name], metadata=metadata)
    return paths


def _stdin(monkeypatch, data: bytes):
    """`data` as standard input, set up as Python does in the C locale."""
    stdin = io.TextIOWrapper(io.BytesIO(data), errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", stdin)


@pytest.mark.parametrize(
    "name, flags",
    [
        ("chat", ["--max-new-tokens", "5"]),
        ("mute", ["--max-new-tokens", "5"]),
        ("chat", ["--max-new-tokens", "0"]),
        ("plain", ["--max-new-tokens", "0"]),
    ],
)
def test_stop_on_templated_models_and_no_new_tokens(dirs, capsys, name, flags):
    """Rows that make no token (no new tokens, or a reply that starts with
    the end id) once failed the stop search: `InvalidArgumentError`."""
    argv = ["generate", dirs[name], "--prompt", "hi", "--stop", "x", *flags]
    assert cli.main(argv) == 0, capsys.readouterr().err
    expected = CausalLM.from_preset(dirs[name]).generate(
        "hi", int(flags[1]), stop=["x"], jit_compile=False
    )
    assert capsys.readouterr().out == expected + "\n"
    if name == "mute" or flags[1] == "0":
        assert expected == ""


def test_stdin_is_generated_in_batches_in_order(dirs, capsys, monkeypatch):
    prompts = ["a", "bc", "d", "efg", "h"]
    monkeypatch.setattr(generate, "BATCH_ROWS", 2)
    _stdin(monkeypatch, "".join(p + "\n" for p in prompts).encode())
    argv = ["generate", dirs["plain"], "--max-new-tokens", "3"]
    assert cli.main(argv + ["--num-return-sequences", "2"]) == 0
    expected = CausalLM.from_preset(dirs["plain"]).generate(
        prompts, 3, num_return_sequences=2, jit_compile=False
    )
    want = "".join(
        f"--- {i // 2 + 1}.{i % 2 + 1}: {prompts[i // 2]}\n{text}\n"
        for i, text in enumerate(expected)
    )
    assert capsys.readouterr().out == want


def _read_until(pipe, marker: bytes, seconds: float) -> bytes:
    got = b""
    while marker not in got:
        ready, _, _ = select.select([pipe], [], [], seconds)
        chunk = os.read(pipe.fileno(), 65536) if ready else b""
        assert chunk, f"no {marker!r} in {seconds} s: prompts not streamed"
        got += chunk
    return got


def _hwm_mb(status: str) -> float:
    """`VmHWM` (peak resident memory) of a `/proc/PID/status` text, in MB."""
    line = next(line for line in status.splitlines() if "VmHWM:" in line)
    return int(line.split()[1]) / 1024


# `tflm ARGV[2:]`, writing its `/proc/self/status` to ARGV[1] as it exits
# (a child's `ru_maxrss` counts its parent's memory from before `exec`).
_CHILD = """import atexit, shutil, sys
from tflm import cli
atexit.register(shutil.copy, "/proc/self/status", sys.argv[1])
sys.exit(cli.main(sys.argv[2:]))
"""


def test_stdin_prompts_are_streamed_in_flat_memory(dirs, tmp_path):
    """60,000 prompts on stdin once grew past 6 GB: all were read, then
    decoded as one batch (the tiny model grows about 25 MB per 1,000 rows
    decoded at once). Now the first answers come before stdin ends, and
    4,032 prompts peak where the first 256 did."""
    status = tmp_path / "status"
    argv = [sys.executable, "-c", _CHILD, str(status), "generate"]
    argv += [dirs["plain"], "--max-new-tokens", "1", "--no-xla"]
    with open(tmp_path / "stderr", "wb") as stderr:
        child = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            child.stdin.write(b"hello\n" * 256)
            child.stdin.flush()
            _read_until(child.stdout, b"--- 256: hello\n", 300)
            with open(f"/proc/{child.pid}/status") as f:
                first = _hwm_mb(f.read())
            child.stdin.write(b"hello\n" * (4032 - 256))
            child.stdin.close()
            out = child.stdout.read()
            child.wait(timeout=300)
        finally:
            if child.returncode is None:
                child.kill()
                child.wait()
            child.stdout.close()
    assert child.returncode == 0, (tmp_path / "stderr").read_text()
    assert b"--- 4032: hello\n" in out
    growth = _hwm_mb(status.read_text()) - first
    assert growth < 40, (first, growth)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"ok\nb\xffd\n", "standard input line 2 is not UTF-8 text"),
        (b"a\x00b\n", "standard input line 1 holds a NUL byte"),
    ],
)
def test_stdin_that_is_not_text_exits_2(
    dirs, capsys, monkeypatch, data, expected
):
    _stdin(monkeypatch, data)
    assert cli.main(["generate", dirs["plain"], "--max-new-tokens", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert expected in captured.err
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "stop, stops",
    [(r"\n", True), (r"\u000a", True), (r"\n\n", True), (r"\\n", False)],
)
def test_stop_reads_escapes(dirs, capsys, stop, stops):
    """`--stop '\\n'` passed a backslash and an n: a model that only says
    newlines now stops at once, unless the backslash is escaped."""
    argv = ["generate", dirs["newlines"], "--prompt", "a", "--stop", stop]
    assert cli.main(argv + ["--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == ("\n" if stops else "\n" * 5)
    assert generate.unescape(r"\\n\n\t\u00e9\q") == "\\n\n\té\\q"


def test_a_long_stop_is_refused_in_a_short_line(dirs, capsys):
    stop = "y" * 100_000
    argv = ["generate", dirs["plain"], "--prompt", "a", "--stop", stop]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"1 to {spec.MAX_STOP_BYTES} bytes" in err
    assert "100,000 characters" in err and len(err) < 300


def test_help_and_readme_state_the_caps(capsys):
    """`--stop` was "any length" in --help and the README, and refused
    beyond 64 bytes."""
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"1 to {spec.MAX_STOP_BYTES} bytes" in text
    assert f"up to {spec.MAX_STOP_STRINGS}" in text
    assert r"\n, \t, \r, \\ and \uXXXX are read as escapes" in text
    with open(README, encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    caps = f"up to {spec.MAX_STOP_STRINGS} of 1 to {spec.MAX_STOP_BYTES} bytes"
    assert caps in readme and "any length" not in readme
    assert f"{generate.BATCH_ROWS} rows at a time" in readme
    assert f"decode {generate.XLA_AFTER_STEPS:,} steps" in readme


def test_readme_stop_example_runs_in_bash(dirs, tmp_path, capsys, monkeypatch):
    """The README's `--stop "\\n\\n"`, as bash passes it (a backslash and
    an n, twice), stops at two newlines: a model that only says newlines
    answers nothing."""
    with open(README, encoding="utf-8") as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.DOTALL)
    (command,) = [b.strip() for b in blocks if "--stop" in b]
    # bash parses the line; `tflm` here only prints the words it was given.
    words = subprocess.run(
        ["bash", "-c", 'tflm() { printf "%s\\0" "$@"; }\n' + command],
        capture_output=True, check=True, text=True,
    ).stdout.split("\0")[:-1]  # fmt: skip
    assert words[words.index("--stop") + 1] == "\\n\\n"
    os.makedirs(tmp_path / "models")
    os.symlink(dirs["newlines"], tmp_path / "models" / "small")
    monkeypatch.chdir(tmp_path)
    assert cli.main(words) == 0
    assert capsys.readouterr().out == "".join(
        f"--- 1.{j}: ROMEO:\n\n" for j in (1, 2, 3)
    )


def test_xla_once_the_run_has_repaid_its_compile():
    """A one-shot run of 20 tokens took 13.0 s with XLA, 8.5 s without."""
    parser = cli.build_parser()
    plain = parser.parse_args(["generate", "m"])
    no_xla = parser.parse_args(["generate", "m", "--no-xla"])
    assert not generate._use_xla(plain, 0)
    assert not generate._use_xla(plain, generate.XLA_AFTER_STEPS - 1)
    assert generate._use_xla(plain, generate.XLA_AFTER_STEPS)
    assert not generate._use_xla(no_xla, generate.XLA_AFTER_STEPS)
