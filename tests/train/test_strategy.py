import json

import pytest
import tensorflow as tf

from tflm.train import strategy as strategy_lib

CLUSTER = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}


@pytest.fixture(autouse=True)
def _no_tf_config(monkeypatch):
    for name in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR"):
        monkeypatch.delenv(name, raising=False)


def test_auto_on_this_machine_is_the_default_strategy(caplog):
    caplog.set_level("INFO")
    strategy = strategy_lib.resolve_strategy("auto")
    # Nothing to say about the default: once printed by every command.
    assert not [r for r in caplog.records if r.levelname == "INFO"]
    assert strategy_lib.is_default(strategy)
    assert strategy.num_replicas_in_sync == 1
    assert strategy_lib.is_chief(strategy)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("default", "_DefaultDistributionStrategy"),
        ("one_device", "OneDeviceStrategy"),
        ("mirrored", "MirroredStrategy"),
    ],
)
def test_named_strategies(name, kind):
    strategy = strategy_lib.resolve_strategy(name)
    assert type(strategy).__name__ == kind
    assert strategy.num_replicas_in_sync == 1


def test_unknown_strategy():
    with pytest.raises(ValueError, match="Unknown strategy.*'gpu'"):
        strategy_lib.resolve_strategy("gpu")


def test_auto_picks_multi_worker_for_several_workers(monkeypatch):
    config = {"cluster": CLUSTER, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert strategy_lib._auto(strategy_lib.parse_tf_config()) == "multi_worker"
    one = {
        "cluster": {"worker": ["a:1"]},
        "task": {"type": "worker", "index": 0},
    }
    assert strategy_lib._auto(one) == "default"


def test_auto_picks_tpu_when_one_is_named(monkeypatch):
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert strategy_lib._auto(None) == "tpu"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
        ('{"cluster": {"worker": "a:1"}}', "needs a 'cluster'"),
        (json.dumps({"cluster": CLUSTER}), "needs a 'task'"),
        (
            json.dumps(
                {"cluster": CLUSTER, "task": {"type": "worker", "index": 2}}
            ),
            "needs a 'task'",
        ),
        (
            json.dumps(
                {"cluster": CLUSTER, "task": {"type": "ps", "index": 0}}
            ),
            "needs a 'task'",
        ),
    ],
)
def test_malformed_tf_config(monkeypatch, text, message):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ValueError, match=message):
        strategy_lib.resolve_strategy("auto")


def test_num_workers():
    assert strategy_lib.num_workers(None) == 1
    config = {"cluster": {"chief": ["a:1"], **CLUSTER}}
    assert strategy_lib.num_workers(config) == 3


def test_batch_must_divide_across_replicas_and_micro_batches():
    assert strategy_lib.check_batch_size(32, 2, 4) == 4
    with pytest.raises(ValueError, match=r"2 x 1 = 2\. Received: batch_size=7"):
        strategy_lib.check_batch_size(7, 2)
    with pytest.raises(ValueError, match="batch_size=12"):
        strategy_lib.check_batch_size(12, 1, 8)


def test_xla_choice_by_setting_strategy_and_precision():
    from tflm.train import fit

    default = strategy_lib.resolve_strategy("default")
    mirrored = strategy_lib.resolve_strategy("mirrored")
    assert fit.use_xla("auto", default, "float32")
    assert not fit.use_xla("auto", mirrored, "float32")
    # Without a GPU, bf16 matmuls are faster outside XLA; with one, XLA.
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert fit.use_xla("auto", default, "mixed_bfloat16") == has_gpu
    assert fit.use_xla("on", default, "mixed_bfloat16")
    assert fit.use_xla("on", mirrored, "float32")
    assert not fit.use_xla("off", default, "float32")
