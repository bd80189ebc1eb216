"""`tflm data dispatcher` and `tflm data worker`: a tf.data service from the
command line."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tflm.data import service


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(*argv):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [sys.executable, "-m", "tflm", "data", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _first_line(process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            return line
        if process.poll() is not None:
            break
    raise AssertionError(process.stderr.read())


def test_a_dispatcher_and_a_worker_serve_a_pipeline():
    dispatcher_port, worker_port = _free_ports(2)
    address = f"grpc://localhost:{dispatcher_port}"
    processes = [_start("dispatcher", "--port", str(dispatcher_port))]
    try:
        assert f":{dispatcher_port}" in _first_line(processes[0])
        processes.append(
            _start(
                "worker", "--dispatcher", address, "--port", str(worker_port)
            )
        )
        assert f"localhost:{worker_port}" in _first_line(processes[1])
        dataset = service.distribute(tf.data.Dataset.range(20), address)
        assert sorted(int(x) for x in dataset) == list(range(20))
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        codes = [process.wait(timeout=30) for process in processes]
    assert codes == [130] * len(processes)


@pytest.mark.parametrize(
    "argv, message",
    [
        (("dispatcher", "--port", "70000"), "--port must be in 1-65535"),
        (
            ("worker", "--dispatcher", "grpc://localhost:1"),
            "cannot reach the tf.data service dispatcher",
        ),
        (("worker", "--dispatcher", "nowhere"), "grpc://HOST:PORT"),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(argv, message):
    process = _start(*argv)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_a_port_in_use_gets_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _start("dispatcher", "--port", str(port))
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr
    assert f"cannot listen on port {port}" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_prepare_trains_sentencepiece_once(tmp_path):
    corpus = tmp_path / "book.txt"
    corpus.write_text("the quick brown fox jumps\n" * 400, encoding="utf-8")
    argv = (
        "prepare", "--data", str(corpus), "--out", str(tmp_path / "data"),
        "--tokenizer", "sentencepiece:300",
    )  # fmt: skip
    first, again = (_start(*argv).communicate(timeout=120) for _ in range(2))
    assert "training a SentencePiece tokenizer of 300 ids" in first[0]
    assert "using the SentencePiece tokenizer of 300 ids" in again[0]
    assert "training" not in again[0]
