"""Fine-tuning: a parent model learns a task from prompt/completion data."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import train_helpers

from tflm import tokenizers
from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.tokenizers import templates
from tflm.train import config as config_lib
from tflm.train import fit
from tflm.train import inputs
from tflm.train import task_metrics

corpus = train_helpers.corpus
TOKENIZER = tokenizers.ByteTokenizer()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A parent model directory, and train / held-out reversal examples."""
    return train_helpers.reversal_task(tmp_path_factory.mktemp("task"))


_config = train_helpers.task_config


def _exact_match(directory, data):
    lm = causal_lm.CausalLM.from_preset(directory)
    conversations = [
        [
            {"role": "user", "content": r["prompt"]},
            {"role": "assistant", "content": r["completion"]},
        ]
        for r in map(json.loads, open(data, encoding="utf-8"))
    ]
    got = task_metrics.greedy_completions(lm, conversations, 4)
    wanted = [c[-1]["content"] for c in conversations]
    return np.mean([g == w for g, w in zip(got, wanted, strict=True)])


def test_finetuning_learns_a_task_the_parent_cannot_do(task, tmp_path):
    before = _exact_match(task["parent"], task["heldout"])
    start = time.perf_counter()
    result = fit.train(_config(task, tmp_path / "tuned"), verbose=0)
    seconds = time.perf_counter() - start
    after = _exact_match(result.directory, task["heldout"])
    print(json.dumps({"before": before, "after": after, "seconds": seconds}))
    assert before == 0.0
    assert after >= 0.6
    # `tflm eval` at its default 64 new tokens on this 40-token context
    # keeps each prompt whole and sizes the replies from the references,
    # so it scores what greedy decoding shows.
    scores = task_metrics.evaluate_task(result.directory, [task["heldout"]])
    assert scores["exact_match"] == pytest.approx(after)
    assert scores["chrf"] > 50.0
    saved = json.load(open(os.path.join(result.directory, "config.json")))
    assert saved["parent"]["sha256"] == model_dir.fingerprint(task["parent"])
    assert saved["template"] == templates.TEMPLATE
    assert saved["best_step"] in range(100, 401, 100)
    # The parent is never modified.
    assert saved["parent"]["sha256"] == model_dir.fingerprint(task["parent"])


def test_lora_learns_the_task_with_the_base_frozen(task, tmp_path):
    pytest.importorskip("tflm.models.lora")
    before = _exact_match(task["parent"], task["heldout"])
    config = _config(task, tmp_path / "lora", lora_rank=8, learning_rate=1e-2)
    result = fit.train(config, verbose=0)
    after = _exact_match(result.directory, task["heldout"])
    assert before == 0.0
    assert after >= 0.5
    saved = json.load(open(os.path.join(result.directory, "config.json")))
    assert saved["lora"]["rank"] == 8
    adapters = os.path.getsize(os.path.join(result.directory, "adapters.npz"))
    base = os.path.getsize(os.path.join(task["parent"], "model.weights.h5"))
    assert adapters < base / 4
    # The base stays in the parent, and the best weights kept are the
    # adapters' (before, both were whole copies of the base).
    assert saved["lora"]["base"] == "parent"
    assert not os.path.exists(
        os.path.join(result.directory, "model.weights.h5")
    )
    best = os.path.getsize(os.path.join(result.directory, "train/best.npz"))
    assert best < base / 4


def test_early_stopping_keeps_the_best_step(task, tmp_path):
    config = _config(
        task,
        tmp_path / "tuned",
        steps=400,
        learning_rate=5e-2,
        validate_every=10,
        checkpoint_every=10,
        early_stopping_patience=2,
        validation_fraction=0.3,
    )
    result = fit.train(config, verbose=0)
    state = json.load(open(os.path.join(result.directory, "train/state.json")))
    saved = json.load(open(os.path.join(result.directory, "config.json")))
    assert state["progress"]["best_step"] == saved["best_step"]
    if state["progress"]["stopped"]:
        assert result.step < 400
        assert result.step - saved["best_step"] >= 20


def test_compile_fit_and_tflm_train_take_the_same_steps(corpus, tmp_path):
    config = config_lib.TrainConfig(
        **train_helpers.tiny_config(
            corpus,
            tmp_path / "cli",
            checkpoint_every=0,
            validate_every=0,
            validation_fraction=0.0,
            accumulation_steps=2,
        )
    )
    trained = fit.train(config, verbose=0).model
    keras.utils.set_random_seed(config.seed)
    lm = causal_lm.CausalLM.from_preset("tiny", vocabulary_size=259)
    lm.compile(
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        total_steps=config.steps,
        schedule=config.schedule,
        accumulation_steps=config.accumulation_steps,
        jit_compile=False,
    )
    keras.utils.set_random_seed(config.seed)
    dataset = inputs.train_dataset(config, TOKENIZER, 16)
    lm.fit(dataset, steps_per_epoch=config.steps, epochs=1, verbose=0)
    for a, b in zip(lm.weights, trained.weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _cli(*args):
    return [sys.executable, "-m", "tflm", "finetune", *args]


def _finetune_argv(task, out, *extra):
    return _cli(
        task["parent"],
        "--data",
        task["train"],
        "--out",
        str(out),
        "--steps",
        "60",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "10",
        "--validate-every",
        "10",
        "--jit-compile",
        "off",
        *extra,
    )


def _step(out):
    try:
        with open(os.path.join(out, "train", "state.json")) as f:
            return json.load(f)["step"]
    except (OSError, ValueError):
        return 0


def _kill_after_checkpoint(argv, out):
    process = subprocess.Popen(
        argv,
        env=train_helpers.subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while _step(out) < 10 and time.monotonic() < deadline:
        assert process.poll() is None, "finished before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _resume_check(task, tmp_path, *extra):
    reference, out = tmp_path / "reference", tmp_path / "killed"
    train_helpers.finish(
        subprocess.Popen(
            _finetune_argv(task, reference, *extra),
            env=train_helpers.subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        timeout=300,
    )
    argv = _finetune_argv(task, out, *extra)
    _kill_after_checkpoint(argv, str(out))
    resumed = _step(str(out))
    assert 10 <= resumed < 60
    output = train_helpers.finish(
        subprocess.Popen(
            argv,
            env=train_helpers.subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        timeout=300,
    )
    assert f"from step {resumed}" in output
    expected = train_helpers.step_losses(str(reference))
    losses = train_helpers.step_losses(str(out))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, 61)],
        [expected[s] for s in range(1, 61)],
        atol=1e-5,
    )
    return reference, out


def test_killed_finetune_resumes_with_the_same_losses(task, tmp_path):
    reference, out = _resume_check(task, tmp_path)
    a = causal_lm.CausalLM.from_preset(str(reference)).get_weights()
    b = causal_lm.CausalLM.from_preset(str(out)).get_weights()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_killed_lora_finetune_resumes(task, tmp_path):
    pytest.importorskip("tflm.models.lora")
    _resume_check(task, tmp_path, "--lora-rank", "4")


def _fails_cleanly(argv, message, parent=None):
    before = model_dir.fingerprint(parent) if parent else None
    process = subprocess.run(
        argv,
        env=train_helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert process.returncode == 2, process.stderr
    lines = [line for line in process.stderr.splitlines() if "rror" in line]
    assert len(lines) == 1 and message in lines[0], process.stderr
    if parent:
        assert model_dir.fingerprint(parent) == before


def test_bad_parents_and_lora_ranks_fail_in_one_line(task, tmp_path):
    out = tmp_path / "out"
    data = ["--data", task["train"], "--out", str(out), "--steps", "2"]
    _fails_cleanly(_cli(str(tmp_path / "nowhere"), *data), "does not exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(
        open(os.path.join(task["parent"], "config.json")).read()
    )
    _fails_cleanly(_cli(str(broken), *data), "model.weights.h5 is missing")
    for rank, message in (("0", "--lora-rank must be"), ("99", "<= the")):
        _fails_cleanly(
            _cli(task["parent"], *data, "--lora-rank", rank),
            message,
            task["parent"],
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 1\n')
    _fails_cleanly(
        _cli(task["parent"], "--data", str(bad), "--out", str(out)),
        f"{bad}:2",
        task["parent"],
    )
    assert not out.exists()
