"""Helpers shared by the training tests.

No `conftest.py` here: a second module named `conftest` would shadow
`tests/conftest.py` for `from conftest import ...` in later modules.
"""

import json
import os
import random
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "worker.py")


def write_corpus(path, paragraphs=400, seed=0):
    """A small corpus of short paragraphs (one document each)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "théta"]
    text = "\n\n".join(
        " ".join(rng.choices(words, k=8)) for _ in range(paragraphs)
    )
    path.write_text(text + "\n", encoding="utf-8")
    return str(path)


def write_reversal(path, count, seed):
    """`count` prompt/completion lines: a 3-letter word and its reverse."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(count):
            word = "".join(rng.choice("abcdefgh") for _ in range(3))
            f.write(json.dumps({"prompt": word, "completion": word[::-1]}))
            f.write("\n")
    return str(path)


def reversal_task(root):
    """A parent model directory (2 small layers, byte tokenizer, random
    weights) and train / held-out reversal examples under `root`."""
    import keras

    from tflm import tokenizers
    from tflm.models import backbone as backbone_lib
    from tflm.models import causal_lm

    tokenizer = tokenizers.ByteTokenizer()
    keras.utils.set_random_seed(0)
    backbone = backbone_lib.Backbone(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        intermediate_dim=128,
        max_sequence_length=40,
    )
    lm = causal_lm.CausalLM(backbone)
    lm.tokenizer = tokenizer
    return {
        "parent": lm.save_to_preset(str(root / "parent")),
        "train": write_reversal(root / "train.jsonl", 300, seed=0),
        "heldout": write_reversal(root / "heldout.jsonl", 40, seed=1),
    }


def task_config(task, out, **overrides):
    """A `TrainConfig` fine-tuning `task["parent"]` on the reversal task."""
    from tflm.train import config as config_lib

    values = dict(
        data=[task["train"]],
        out=str(out),
        init_from=task["parent"],
        data_format="task",
        steps=400,
        batch_size=16,
        learning_rate=3e-3,
        warmup_steps=10,
        weight_decay=0.0,
        checkpoint_every=100,
        validate_every=100,
        jit_compile="on",
        log_every=50,
    )
    values.update(overrides)
    return config_lib.TrainConfig(**values)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small corpus file (a fixture: assign it in the test module)."""
    return write_corpus(tmp_path_factory.mktemp("data") / "corpus.txt")


def tiny_config(corpus, out, **overrides):
    """Keyword arguments of a `TrainConfig` that trains in seconds."""
    config = dict(
        data=[corpus],
        out=str(out),
        preset="tiny",
        text_format="paragraph",
        steps=6,
        batch_size=8,
        learning_rate=1e-2,
        warmup_steps=2,
        checkpoint_every=3,
        validate_every=3,
        jit_compile="off",
        log_every=1,
    )
    config.update(overrides)
    return config


def subprocess_env(**extra):
    """This environment for a child process, without `TF_CONFIG`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def start_worker(spec, **env):
    """Starts `worker.py` with `spec` (see its docstring)."""
    return subprocess.Popen(
        [sys.executable, WORKER, json.dumps(spec)],
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process, timeout=120):
    """Waits for a child; fails the test with its output if it failed."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(
            f"timed out after {timeout} s:\n{output}"
        ) from None
    assert process.returncode == 0, output[-4000:]
    return output


def step_losses(directory):
    """`{step: loss}` from a model directory's metrics log."""
    from tflm.train import state

    return {
        r["step"]: r["loss"] for r in state.read_log(directory) if "loss" in r
    }


def free_ports(count):
    """`count` loopback ports free right now (for workers to listen on)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
