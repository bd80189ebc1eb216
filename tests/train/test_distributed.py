"""Mirrored and multi-worker runs agree with a single-device run."""

import json
import os

import numpy as np
import pytest
import train_helpers

from tflm.train import config as config_lib
from tflm.train import fit

corpus = train_helpers.corpus

# A small clip norm, so that clipping is active: it must see the gradient
# summed over replicas, as a single device does.
CLIP = dict(clip_norm=0.05)


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    """Step losses and final weights of the single-device run."""
    out = tmp_path_factory.mktemp("single") / "model"
    config = train_helpers.tiny_config(corpus, out, strategy="default", **CLIP)
    result = fit.train(config_lib.TrainConfig(**config), verbose=0)
    weights = [np.ravel(w) for w in result.model.get_weights()]
    return train_helpers.step_losses(out), np.concatenate(weights)


def _assert_matches(single, directory, weights):
    expected, expected_weights = single
    losses = train_helpers.step_losses(directory)
    assert sorted(losses) == sorted(expected) == list(range(1, 7))
    np.testing.assert_allclose(
        [losses[s] for s in expected], list(expected.values()), atol=1e-5
    )
    np.testing.assert_allclose(weights, expected_weights, atol=1e-5)


def test_mirrored_over_two_cpus_matches_the_default_strategy(
    corpus, tmp_path, single
):
    config = train_helpers.tiny_config(
        corpus, tmp_path / "mirrored", strategy="mirrored", **CLIP
    )
    mirrored = train_helpers.start_worker(
        {
            "config": config,
            "logical_cpus": 2,
            "weights": str(tmp_path / "mirrored.npy"),
        }
    )
    train_helpers.finish(mirrored)
    weights = np.load(tmp_path / "mirrored.npy")
    _assert_matches(single, tmp_path / "mirrored", weights)


def test_two_workers_end_with_identical_weights(corpus, tmp_path, single):
    ports = train_helpers.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        task = {"type": "worker", "index": index}
        spec = {
            "config": train_helpers.tiny_config(
                corpus, tmp_path / "model", **CLIP
            ),
            "weights": str(tmp_path / f"worker{index}.npy"),
        }
        tf_config = json.dumps({"cluster": cluster, "task": task})
        workers.append(train_helpers.start_worker(spec, TF_CONFIG=tf_config))
    for worker in workers:
        train_helpers.finish(worker, timeout=180)
    first, second = (np.load(tmp_path / f"worker{i}.npy") for i in range(2))
    np.testing.assert_array_equal(first, second)
    # Only the chief wrote (and the workers agreed on everything). Each
    # global batch was split over the workers, so the run also matches a
    # single-device one.
    assert sorted(os.listdir(tmp_path)) == [
        "model",
        "worker0.npy",
        "worker1.npy",
    ]
    _assert_matches(single, tmp_path / "model", first)
