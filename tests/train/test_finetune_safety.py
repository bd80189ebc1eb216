"""Fine-tuning keeps what it writes and reads: one writer per --out, an
--out apart from its parent, a full disk that stops the run in one line,
and bad input files refused in one line (exit 2)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import train_helpers
from safetensors import numpy as safetensors_numpy

from tflm import cli
from tflm.models import model_dir
from tflm.tokenizers import gpt2_bpe_ops
from tflm.train import fit


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return train_helpers.reversal_task(tmp_path_factory.mktemp("task"))


def _argv(parent, data, out, *extra):
    return [
        "finetune",
        str(parent),
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--jit-compile",
        "off",
        *extra,
    ]


def _error_line(err: str) -> str:
    """The one line that reports an error (fails if there are several)."""
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _open_writer(fifo, seconds=120):
    """Opens `fifo` for writing once a reader has it open."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert time.monotonic() < deadline, "the run never read its parent"
            time.sleep(0.01)


def test_a_run_holds_its_out_from_before_it_reads_it(task, tmp_path, capsys):
    # The race of issue 26: run A read --out (empty) while preparing, run B
    # wrote a model there, then A took the lock and replaced B's model.
    # A's parent's tokenizer holds a FIFO, so A stops while fingerprinting
    # its parent (after reading --out) until the test closes the FIFO.
    slow = tmp_path / "slow_parent"
    shutil.copytree(task["parent"], slow)
    os.mkfifo(slow / "tokenizer" / "pause.fifo")
    out = tmp_path / "out"
    config = train_helpers.task_config(
        {**task, "parent": str(slow)},
        out,
        steps=3,
        batch_size=4,
        warmup_steps=1,
        jit_compile="off",
    )
    results = []
    first = threading.Thread(
        target=lambda: results.append(fit.train(config, verbose=0))
    )
    first.start()
    fd = _open_writer(slow / "tokenizer" / "pause.fifo")
    try:
        code = cli.main(_argv(task["parent"], task["train"], out))
    finally:
        os.close(fd)
        first.join(timeout=300)
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and "being written by another tflm run" in line
    assert results and results[0].step == 3
    with open(out / "config.json") as f:
        assert json.load(f)["parent"]["path"] == str(slow)


def test_out_inside_the_parent_or_around_it_is_refused(task, tmp_path, capsys):
    parent = tmp_path / "parent"
    shutil.copytree(task["parent"], parent)
    before = model_dir.fingerprint(str(parent))
    for out in (parent, parent / "tuned"):
        assert cli.main(_argv(parent, task["train"], out)) == 2
        line = _error_line(capsys.readouterr().err)
        assert f"--out {out} is inside the parent model {parent}" in line
        assert "never resume" in line
    assert model_dir.fingerprint(str(parent)) == before
    assert sorted(os.listdir(parent)) == sorted(os.listdir(task["parent"]))
    # The reverse: the parent inside --out would move at every checkpoint.
    around = tmp_path / "around"
    os.makedirs(around)
    shutil.copytree(task["parent"], around / "base")
    assert cli.main(_argv(around / "base", task["train"], around)) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{around / 'base'} is inside --out {around}" in line


def test_resuming_checks_the_parent_model_not_its_folder(
    task, tmp_path, capsys
):
    parent, out = tmp_path / "parent", tmp_path / "out"
    shutil.copytree(task["parent"], parent)
    argv = _argv(parent, task["train"], out, "--lora-rank", "2")
    assert cli.main(argv) == 0
    with open(out / "config.json") as f:
        record = json.load(f)["parent"]
    assert record["sha256"] == model_dir.fingerprint(str(parent))
    assert set(record["files"]) == {
        "model.weights.h5",
        "tokenizer/tokenizer.json",
    }
    # Notes and an export beside the parent model: the same parent, and
    # the run goes on (before, it was refused as another parent).
    (parent / "NOTES.md").write_text("mine")
    (parent / "serving").mkdir()
    (parent / "serving" / "saved_model.pb").write_bytes(b"x")
    capsys.readouterr()
    assert cli.main(argv + ["--steps", "4"]) == 0
    assert "fine-tuned steps 4-4" in capsys.readouterr().out
    # A fingerprint recorded by an older tflm (over every file): refused,
    # saying why and what to do.
    with open(out / "config.json") as f:
        config = json.load(f)
    config["parent"]["sha256"] = "0" * 64
    (out / "config.json").write_text(json.dumps(config))
    assert cli.main(argv + ["--steps", "5"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{parent} is not the model {out} was started from" in line
    assert "older tflm" in line and "new --out" in line


def _write_bytes(path, content: bytes):
    path.write_bytes(content)
    return path


GOOD = b'{"prompt": "abc", "completion": "cba"}\n'
LATIN1 = '{"prompt": "café", "completion": "x"}\n'.encode("latin-1")
BAD_FILES = [
    # (file content, what the line says)
    (
        GOOD + LATIN1,
        ":2: not UTF-8 text (the first bad byte is at byte offset "
        f"{len(GOOD) + LATIN1.index(0xE9)})",
    ),
    (GOOD + b'{"prompt": ' + b"[" * 100_000 + b"\n", ":2: the JSON is nested"),
    (
        GOOD + b'{"prompt": "a\\ud800", "completion": "b"}\n',
        ":2: a string holds the lone surrogate \\ud800",
    ),
]


@pytest.mark.parametrize("content, message", BAD_FILES)
def test_bad_example_files_fail_in_one_line(
    task, tmp_path, capsys, content, message
):
    data = _write_bytes(tmp_path / "bad.jsonl", content)
    out = tmp_path / "out"
    assert cli.main(_argv(task["parent"], data, out)) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{data}{message}" in line
    assert not out.exists()


def test_a_latin1_corpus_fails_like_a_latin1_jsonl(tmp_path, capsys):
    corpus = _write_bytes(
        tmp_path / "latin1.txt", "ok\ncafé\n".encode("latin-1")
    )
    argv = ["train", "--data", str(corpus), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--preset", "tiny", "--steps", "1"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{corpus}:2: not UTF-8 text (the first bad byte is at byte " in line
    assert "Re-encode the file to UTF-8" in line


def _truncated_checkpoint(directory):
    """A GPT-2 checkpoint in the Hugging Face layout, cut short."""
    os.makedirs(directory)
    chars = gpt2_bpe_ops.bytes_to_unicode().values()
    vocab = {c: i for i, c in enumerate(chars)} | {"<|endoftext|>": 256}
    config = {"model_type": "gpt2", "vocab_size": 257, "n_positions": 8}
    config.update(n_embd=4, n_layer=1, n_head=1)
    for name, content in (("config.json", config), ("vocab.json", vocab)):
        with open(directory / name, "w") as f:
            json.dump(content, f)
    (directory / "merges.txt").write_text("#version: 0.2\n")
    weights = directory / "model.safetensors"
    tensor = np.zeros((257, 4), np.float32)
    safetensors_numpy.save_file({"wte.weight": tensor}, str(weights))
    _write_bytes(weights, weights.read_bytes()[:-16])
    return directory


def test_a_truncated_parent_fails_as_import_does(task, tmp_path, capsys):
    parent = tmp_path / "model"
    shutil.copytree(task["parent"], parent)
    weights = parent / "model.weights.h5"
    _write_bytes(weights, weights.read_bytes()[:-100])
    assert cli.main(_argv(parent, task["train"], tmp_path / "tuned")) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"{weights} is not a readable weights file" in line
    parent = _truncated_checkpoint(tmp_path / "checkpoint")
    assert cli.main(["import", str(parent), "--out", str(tmp_path / "i")]) == 2
    imported = _error_line(capsys.readouterr().err)
    assert "model.safetensors: truncated" in imported
    out = tmp_path / "out"
    assert cli.main(_argv(parent, task["train"], out)) == 2
    tuned = _error_line(capsys.readouterr().err)
    assert tuned.split("error: ")[1] == imported.split("error: ")[1]
    assert not out.exists()


# Runs in its own mount namespace (`unshare`): a small tmpfs is the full
# disk, and it goes away with the namespace. Both runs share one process (one
# TensorFlow start); a crash of the first ends it (the test sees the signal).
FULL_DISK = textwrap.dedent(
    """
    import contextlib, io, json, os, re, subprocess, sys

    spec = json.loads(sys.argv[1])
    disk = spec["disk"]

    def mount(size, *options):
        options = ",".join([*options, f"size={size // 1024 + 1}k"])
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", disk]
        return subprocess.run(command, capture_output=True).returncode == 0

    def finetune():
        from tflm import cli

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(spec["argv"])
            except SystemExit as exit:
                code = exit.code
        return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

    def step():
        try:
            with open(os.path.join(disk, "out", "train", "state.json")) as f:
                return json.load(f)["step"]
        except OSError:
            return None

    if not mount(spec["size"]):
        sys.exit(77)
    result = {"first": finetune()}
    result["entries"], result["kept"] = sorted(os.listdir(disk)), step()
    short = re.search(r"Free at least ([0-9.,]+) MB", result["first"]["err"])
    if short:
        more = float(short[1].replace(",", "")) * 1e6 + 1e5  # rounding
        assert mount(int(spec["size"] + more), "remount")
        result["second"], result["final"] = finetune(), step()
    with open(spec["result"], "w") as f:
        json.dump(result, f)
    """
)


def test_a_full_disk_at_a_later_checkpoint_stops_in_one_line(task, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small file system")
    disk, result = tmp_path / "disk", tmp_path / "result.json"
    disk.mkdir()
    weights = os.path.getsize(os.path.join(task["parent"], "model.weights.h5"))
    argv = _argv(task["parent"], task["train"], disk / "out")
    argv[argv.index("--steps") + 1] = "4"
    argv += ["--checkpoint-every", "2", "--validate-every", "2"]
    spec = {
        "disk": str(disk),
        "result": str(result),
        # The checkpoint of step 0 (the weights and the optimizer's two
        # moments: about 2.7x the weights) fits; the next (and the best
        # weights) beside it does not, and unchecked, the disk would fill
        # while HDF5 writes the weights, which crashed the process.
        "size": int(3.4 * weights),
        "argv": argv,
    }
    process = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount"]
        + [sys.executable, "-c", FULL_DISK, json.dumps(spec)],
        env=train_helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if process.returncode == 77 or "unshare:" in process.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {process.stderr.strip()}")
    assert process.returncode == 0, process.stderr  # not -11 (SIGSEGV)
    with open(result) as f:
        result = json.load(f)
    first = result["first"]
    assert first["code"] == 2, first["err"]
    assert "Exception ignored" not in first["err"]
    line = _error_line(first["err"])
    assert f"No space left on {disk} for the checkpoint of step 2: " in line
    assert (
        f"it resumes from step 0, the checkpoint {disk / 'out'} keeps" in line
    )
    assert result["entries"] == ["out"] and result["kept"] == 0
    # With the space the line asks for, the rerun resumes and finishes.
    second = result["second"]
    assert second["code"] == 0, second["err"]
    assert "from step 0" in second["out"] + second["err"]
    assert "fine-tuned steps 1-4" in second["out"]
    assert result["final"] == 4
