"""Training from prepared token shards (`tflm data prepare`)."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import train_helpers

from tflm import errors
from tflm import tokenizers
from tflm.data import shards
from tflm.train import config as config_lib
from tflm.train import fit
from tflm.train import inputs

corpus = train_helpers.corpus


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """The corpus prepared with the byte tokenizer, in small shards (some
    held out for validation)."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    shards.prepare(
        [corpus],
        tokenizers.ByteTokenizer(),
        out,
        text_format="paragraph",
        shard_tokens=2_000,
        progress=False,
    )
    return str(out)


def _config(data, out, **overrides):
    values = train_helpers.tiny_config(data, out, **overrides)
    values.pop("text_format")  # Settled when the data was prepared.
    return config_lib.TrainConfig(**values)


class _Crash(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == 4:
            raise RuntimeError("crash")


def test_a_crashed_run_from_shards_resumes_with_the_same_losses(
    prepared, tmp_path
):
    reference = fit.train(_config(prepared, tmp_path / "ref"), verbose=0)
    assert reference.validation_loss is not None  # The held-out shards.
    config = _config(prepared, tmp_path / "model")
    with pytest.raises(RuntimeError, match="crash"):
        fit.train(config, verbose=0, callbacks=[_Crash()])
    resumed = fit.train(config, verbose=0)
    assert (resumed.start_step, resumed.step) == (3, 6)
    expected = train_helpers.step_losses(tmp_path / "ref")
    losses = train_helpers.step_losses(tmp_path / "model")
    assert sorted(losses) == list(range(1, 7))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, 7)],
        [expected[s] for s in range(1, 7)],
        atol=1e-5,
    )


def test_the_run_uses_the_tokenizer_the_data_was_prepared_with(
    corpus, tmp_path
):
    tokenizer = tokenizers.SentencePieceTokenizer.train(
        [str(corpus)], vocabulary_size=300
    )
    data = tmp_path / "data"
    shards.prepare([corpus], tokenizer, data, progress=False)
    result = fit.train(
        _config(str(data), tmp_path / "model", validation_fraction=0.0),
        verbose=0,
    )
    assert result.model.tokenizer.type_name == "sentencepiece"
    assert result.model.tokenizer.vocabulary_size == 300
    # Another tokenizer than the shards' is refused, naming the fix.
    with pytest.raises(errors.InputError, match="another tokenizer"):
        fit.train(
            _config(str(data), tmp_path / "other", tokenizer="byte"),
            verbose=0,
        )
    assert not os.path.exists(tmp_path / "other")


def test_epochs_count_windows_from_the_manifest(prepared, tmp_path):
    config = _config(prepared, tmp_path / "m", steps=None, epochs=1.0)
    tokenizer = tokenizers.ByteTokenizer()
    per_epoch = inputs.batches_per_epoch(config, tokenizer, 16)
    manifest = json.loads(open(os.path.join(prepared, "prepared.json")).read())
    windows = sum(
        s["tokens"] // 17 for s in manifest["shards"] if s["split"] == "train"
    )
    assert per_epoch == windows // 8 > 0


def test_a_corpus_too_large_for_memory_is_sent_to_prepare(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:  # Sparse: nothing is read before the check.
        f.truncate(inputs.PREPARE_ABOVE_BYTES + 1)
    with pytest.raises(errors.InputError, match="tflm data prepare --data"):
        fit.train(_config(str(big), tmp_path / "model"), verbose=0)
    assert not os.path.exists(tmp_path / "model")


def _tflm(*argv):
    return subprocess.run(
        [sys.executable, "-m", "tflm", *argv],
        capture_output=True,
        text=True,
        env=train_helpers.subprocess_env(),
        timeout=300,
    )


def test_cli_prepares_then_trains_and_says_what_went_wrong(tmp_path):
    corpus = train_helpers.write_corpus(tmp_path / "corpus.txt")
    data = tmp_path / "data"
    done = _tflm(
        "data", "prepare", "--data", str(corpus), "--out", str(data),
        "--shard-tokens", "4000", "--text-format", "paragraph",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"written to: {data}" in done.stdout
    manifest = json.loads((data / "prepared.json").read_text())
    assert manifest["tokens"] > 0 and manifest["splits"]["validation"]
    trained = _tflm(
        "train", "--data", str(data), "--preset", "tiny", "--steps", "4",
        "--batch-size", "8", "--out", str(tmp_path / "model"),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "trained steps 1-4" in trained.stdout
    # The corpus changed after it was prepared: one line, exit 2.
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("\n\nMore text, written after the data was prepared.\n")
    changed = _tflm(
        "train", "--data", str(data), "--preset", "tiny", "--steps", "4",
        "--out", str(tmp_path / "again"),
    )  # fmt: skip
    assert changed.returncode == 2
    assert "the corpus changed after" in changed.stderr
    assert "tflm data prepare" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    train_helpers.write_corpus(tmp_path / "corpus.txt")  # As prepared.
    # A shard changed in place, then one cut short: each is named.
    first = data / manifest["shards"][0]["file"]
    content = bytearray(first.read_bytes())
    content[10:14] = bytes(4)
    first.write_bytes(bytes(content))
    changed = _tflm(
        "train", "--data", str(data), "--preset", "tiny", "--steps", "4",
        "--out", str(tmp_path / "fourth"),
    )  # fmt: skip
    assert changed.returncode == 2, changed.stderr
    assert str(first) in changed.stderr and "do not match" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    first.write_bytes(first.read_bytes()[:-3])
    damaged = _tflm(
        "train", "--data", str(data), "--preset", "tiny", "--steps", "4",
        "--out", str(tmp_path / "third"),
    )  # fmt: skip
    assert damaged.returncode == 2
    assert str(first) in damaged.stderr and "truncated" in damaged.stderr


def test_two_workers_train_from_their_own_shards(prepared, tmp_path):
    ports = train_helpers.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        config = train_helpers.tiny_config(prepared, tmp_path / "model")
        config.pop("text_format")
        spec = {"config": config, "weights": str(tmp_path / f"w{index}.npy")}
        tf_config = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        workers.append(train_helpers.start_worker(spec, TF_CONFIG=tf_config))
    for worker in workers:
        train_helpers.finish(worker, timeout=180)
    first, second = (np.load(tmp_path / f"w{i}.npy") for i in range(2))
    np.testing.assert_array_equal(first, second)
    losses = train_helpers.step_losses(tmp_path / "model")
    assert sorted(losses) == list(range(1, 7))
    assert all(np.isfinite(list(losses.values())))


def test_a_run_reads_its_shards_through_a_tf_data_service(prepared, tmp_path):
    from tflm.data import service

    local = service.start_local(workers=2)
    try:
        result = fit.train(
            _config(prepared, tmp_path / "model", data_service=local.address),
            verbose=0,
        )
    finally:
        local.stop()
    losses = train_helpers.step_losses(tmp_path / "model")
    assert sorted(losses) == list(range(1, 7))
    assert losses[6] < losses[1]
    assert result.validation_loss is not None


def test_data_service_needs_prepared_data_and_a_dispatcher(
    corpus, prepared, tmp_path
):
    with pytest.raises(errors.InputError, match="tflm data prepare"):
        fit.train(
            _config(corpus, tmp_path / "a", data_service="grpc://localhost:1"),
            verbose=0,
        )
    with pytest.raises(errors.InputError, match="cannot reach"):
        fit.train(
            _config(prepared, tmp_path / "b", data_service="localhost:1"),
            verbose=0,
        )
    assert not os.path.exists(tmp_path / "a")
    assert not os.path.exists(tmp_path / "b")


def test_options_settled_when_preparing_are_refused(prepared, tmp_path):
    config = dataclasses.replace(
        _config(prepared, tmp_path / "m"), text_format="line"
    )
    with pytest.raises(errors.InputError, match="drop --text-format"):
        fit.train(config, verbose=0)
    assert not os.path.exists(tmp_path / "m")


def test_validation_of_large_prepared_data_is_a_fixed_sample(
    prepared, tmp_path, monkeypatch
):
    monkeypatch.setattr(inputs, "VALIDATION_TOKENS", 3 * 8 * 17)
    config = _config(prepared, tmp_path / "m")
    tokenizer = tokenizers.ByteTokenizer()
    dataset, steps = inputs.validation_dataset(config, tokenizer, 16)
    assert steps == 3
    batches = [b[0]["token_ids"].numpy() for b in dataset.take(2 * steps)]
    # Every validation scores the same batches.
    for first, again in zip(batches[:steps], batches[steps:], strict=True):
        np.testing.assert_array_equal(first, again)
    full, _ = inputs.validation_dataset(
        dataclasses.replace(config, eval_batches=100), tokenizer, 16
    )
    assert len(list(full.take(100))) == 100
