"""The one place where the distribution strategy is chosen.

Everything else (per-replica batch, dataset sharding, which worker writes
checkpoints) follows from the strategy this module returns.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import tensorflow as tf

from tflm import errors
from tflm.models import train_step
from tflm.train import config as config_lib

logger = logging.getLogger(__name__)

_TPU_ENV = ("TPU_NAME", "COLAB_TPU_ADDR")


def parse_tf_config(text: str | None = None) -> dict[str, Any] | None:
    """Parses and checks `TF_CONFIG` (the environment variable by default).

    Args:
        text: the JSON text; `None` reads `os.environ["TF_CONFIG"]`.

    Returns:
        The parsed dict, or `None` when `TF_CONFIG` is unset or empty.

    Raises:
        ValueError: it is not JSON, or lacks a valid `cluster` or `task`.
    """
    if text is None:
        text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise errors.InputError(f"TF_CONFIG is not valid JSON: {err}") from None
    example = (
        '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not all(
        isinstance(v, list) and all(isinstance(a, str) for a in v)
        for v in cluster.values()
    ):
        raise errors.InputError(
            "TF_CONFIG needs a 'cluster' mapping job names to lists of "
            f"'host:port' strings, for example {example}. Received: {text}"
        )
    if (
        not isinstance(task, dict)
        or task.get("type") not in cluster
        or not isinstance(task.get("index"), int)
        or not 0 <= task["index"] < len(cluster[task["type"]])
    ):
        raise errors.InputError(
            "TF_CONFIG needs a 'task' with a 'type' from its cluster and an "
            f"'index' into that job's list, for example {example}. "
            f"Received: {text}"
        )
    return config


def num_workers(tf_config: dict[str, Any] | None) -> int:
    """Workers (chief included) that `tf_config` names; 1 without one."""
    if not tf_config:
        return 1
    cluster = tf_config["cluster"]
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def tpu_configured() -> bool:
    """Whether the environment names a TPU (`TPU_NAME`, `COLAB_TPU_ADDR`)."""
    return any(os.environ.get(name) for name in _TPU_ENV)


def resolve_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the distribution strategy called `name`.

    Call it before any other TensorFlow work: multi-worker and TPU
    strategies must start before the runtime does.

    Args:
        name: one of `tflm.train.config.STRATEGIES`. `"auto"` picks a TPU
            when one is configured, `MultiWorkerMirroredStrategy` when
            `TF_CONFIG` names more than one worker, `MirroredStrategy` when
            more than one GPU is visible, and else the default strategy.
            `"mirrored"` mirrors over all local GPUs, or over all logical
            CPUs without a GPU.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: unknown name, or a malformed `TF_CONFIG`.
    """
    if name not in config_lib.STRATEGIES:
        raise errors.InputError(
            f"Unknown strategy. Received: strategy={name!r}. Expected one of "
            f"{', '.join(config_lib.STRATEGIES)}."
        )
    tf_config = parse_tf_config()
    if name == "auto":
        name = _auto(tf_config)
        # Said only when `auto` distributes: a default run has nothing to say.
        level = logging.DEBUG if name == "default" else logging.INFO
        logger.log(level, "Strategy: %s (auto).", name)
    if name == "tpu":
        return _tpu_strategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def _auto(tf_config: dict[str, Any] | None) -> str:
    if tpu_configured():
        return "tpu"
    if num_workers(tf_config) > 1:
        return "multi_worker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def _tpu_strategy() -> tf.distribute.Strategy:
    tpu = os.environ.get("TPU_NAME", "local")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and logs.

    Every process is the chief except the non-chief workers of a
    multi-worker strategy.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def check_batch_size(
    batch_size: int, num_replicas: int, accumulation_steps: int = 1
) -> int:
    """Checks that the global batch splits evenly; returns the micro-batch.

    Args:
        batch_size: the global batch, summed over replicas and
            accumulation steps.
        num_replicas: `strategy.num_replicas_in_sync`.
        accumulation_steps: micro-batches per replica per update.

    Returns:
        The rows one replica runs at once: `batch_size / num_replicas /
        accumulation_steps`.
    """
    parts = num_replicas * accumulation_steps
    if batch_size % parts:
        raise errors.InputError(
            f"batch_size must be a multiple of replicas x accumulation steps "
            f"= {num_replicas} x {accumulation_steps} = {parts}. Received: "
            f"batch_size={batch_size}."
        )
    return batch_size // parts


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is TensorFlow's default one (no distribution)."""
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


def check_workers_agree(
    strategy: tf.distribute.Strategy, **values: int
) -> None:
    """Raises on every worker unless all workers hold the same `values`.

    A no-op without several workers. Two collective sums (of the values and
    of their squares) tell whether they are all equal.

    Args:
        strategy: the run's strategy.
        **values: small integers, such as the step a run resumes from.
    """
    if not train_step.spans_workers(strategy) or not values:
        return
    local = tf.constant(list(values.values()), tf.float64)
    sums = strategy.run(lambda: (tf.identity(local), tf.square(local)))
    total, squares = (
        strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums
    )
    n = strategy.num_replicas_in_sync
    differ = [
        name
        for name, t, q in zip(
            values, total.numpy(), squares.numpy(), strict=True
        )
        if q * n != t * t
    ]
    if differ:
        raise errors.InputError(
            f"The workers disagree on {', '.join(differ)}: every worker must "
            "see the same model directory (put --out on a filesystem they "
            "share) and run the same command."
        )
