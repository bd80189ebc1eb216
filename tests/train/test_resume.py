"""A run killed with SIGKILL resumes where its last checkpoint left off."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import train_helpers

from tflm.models import causal_lm

corpus = train_helpers.corpus

STEPS = 200
EVERY = 20


def _command(corpus, out):
    flags = train_helpers.tiny_config(
        corpus,
        out,
        steps=STEPS,
        checkpoint_every=EVERY,
        validate_every=100,
        log_every=50,
    )
    argv = [sys.executable, "-m", "tflm.cli", "train"]
    for name, value in flags.items():
        argv.append("--" + name.replace("_", "-"))
        argv.extend(value if isinstance(value, list) else [str(value)])
    return argv


def _start(argv):
    return subprocess.Popen(
        argv,
        env=train_helpers.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(argv):
    return train_helpers.finish(_start(argv), timeout=180)


def _checkpointed_step(out):
    try:
        with open(os.path.join(out, "train", "state.json")) as f:
            return json.load(f)["step"]
    except (OSError, ValueError):
        return 0


def _kill_after_first_checkpoint(argv, out):
    process = subprocess.Popen(
        argv,
        env=train_helpers.subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _checkpointed_step(out) < EVERY and time.monotonic() < deadline:
        assert process.poll() is None, (
            "training ended before the test could kill it"
        )
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _weights(directory):
    model = causal_lm.CausalLM.from_preset(directory)
    return np.concatenate([np.ravel(w) for w in model.get_weights()])


def test_killed_run_resumes_and_continues_the_loss_curve(corpus, tmp_path):
    reference, out = str(tmp_path / "reference"), str(tmp_path / "killed")
    uninterrupted = _start(_command(corpus, reference))
    argv = _command(corpus, out)
    _kill_after_first_checkpoint(argv, out)
    resumed_from = _checkpointed_step(out)
    assert EVERY <= resumed_from < STEPS
    output = _run(argv)
    train_helpers.finish(uninterrupted, timeout=180)
    assert f"from step {resumed_from}" in output
    expected = train_helpers.step_losses(reference)
    losses = train_helpers.step_losses(out)
    assert sorted(losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, STEPS + 1)],
        [expected[s] for s in range(1, STEPS + 1)],
        atol=1e-5,
    )
    np.testing.assert_allclose(_weights(out), _weights(reference), atol=1e-5)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    # A finished run is not trained again.
    assert "already trained" in _run(argv)
    assert train_helpers.step_losses(out) == losses
