"""Reading prepared shards through the tf.data service.

The tf.data service moves input processing off the trainers: a dispatcher
(`grpc://HOST:PORT`) hands out work, worker processes run the pipeline,
and each trainer receives finished elements over gRPC. `distribute` sends
a `tflm.data.prepared.window_groups` dataset there in the
`"distributed_epoch"` mode:

- the pipeline's source is `tf.data.Dataset.range` over group indices, so
  it is splittable: the dispatcher hands the group indices out to the
  workers, one at a time, as they ask for more;
- each worker runs the rest of the pipeline on its indices: it reads the
  group's shards, permutes their windows (seeded, as locally) and returns
  the whole group as one element, which the trainer then `unbatch`es or
  `rebatch`es;
- every group of the epoch is read once, by one worker: together the
  trainers receive exactly the windows of a local run, but in an order
  that depends on which worker answers first. A resumed run is therefore
  exact to the group at best, not to the window: groups are never split
  across workers, but the ones in flight when a run stops (a few per
  worker) may arrive out of order, so `skip_windows`, which counts in the
  local order, can read a group near the stop twice or pass over one.

The workers read the shard files by the absolute paths recorded in the
dataset, so they must see the prepared folder at the same path as the
trainer (a shared file system). Build the dataset without
`input_context`: the service replaces per-pipeline sharding. Several
trainers of one run pass the same `job_name` and the same dataset (same
seed, split and length); they then share one job and each element goes
to exactly one of them. Reads wait while the dispatcher has no worker.

Example (in-process, on loopback):
>>> service = start_local(workers=1)
>>> dataset = distribute(tf.data.Dataset.range(3), service.address)
>>> sorted(int(x) for x in dataset)
[0, 1, 2]
>>> service.stop()
"""

from __future__ import annotations

import re
import socket
import threading
from typing import NamedTuple

import tensorflow as tf

from tflm import errors

_ADDRESS = re.compile(r"(?:grpc://)?(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d+)")


def parse_address(address: str) -> tuple[str, int]:
    """The host and port of a dispatcher address.

    Args:
        address: `grpc://HOST:PORT` or `HOST:PORT` (an IPv6 host in
            brackets: `grpc://[::1]:5050`).

    Returns:
        `(host, port)`, the host without brackets.

    Raises:
        InputError: anything else, or a port outside 1-65535.

    Example:
    >>> parse_address("grpc://dispatcher.local:5050")
    ('dispatcher.local', 5050)
    """
    match = _ADDRESS.fullmatch(str(address))
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise errors.InputError(
            "the tf.data service address must have the form "
            "grpc://HOST:PORT (port 1-65535). Received: "
            f"{errors.shorten(str(address))}"
        )
    return match.group(1).strip("[]"), int(match.group(2))


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Checks that something accepts TCP connections at `address`.

    The name lookup and the connection run in a helper thread that is
    abandoned after `timeout`, so this returns within `timeout` seconds
    even when DNS hangs.

    Args:
        address: the dispatcher, as for `parse_address`.
        timeout: seconds to wait.

    Raises:
        InputError: a malformed address, or no answer within `timeout`.
    """
    host, port = parse_address(address)
    outcome: list[BaseException | None] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome and outcome[0] is None:
        return
    reason = "timed out"
    if outcome and not isinstance(outcome[0], TimeoutError):
        reason = outcome[0].strerror or str(outcome[0]) or "no answer"
    raise errors.InputError(
        "cannot reach the tf.data service dispatcher at "
        f"grpc://{_join(host, port)} within {timeout:g} s ({reason}). "
        'Start it (see the README\'s "tf.data service" section) or fix '
        "--data-service."
    )


def distribute(
    dataset: tf.data.Dataset,
    address: str,
    job_name: str | None = None,
    *,
    timeout: float = 10.0,
) -> tf.data.Dataset:
    """`dataset` produced by the tf.data service at `address`.

    Args:
        dataset: a pipeline with a splittable source, such as
            `tflm.data.prepared.window_groups(...)` (see the module
            docstring).
        address: the dispatcher, `grpc://HOST:PORT`.
        job_name: shared by the trainers of one run, so that they read
            one job between them; `None` gives this dataset its own job.
        timeout: seconds to wait for the dispatcher to answer.

    Returns:
        A dataset of the same elements, read from the service's workers,
        each element once per epoch, in no fixed order.

    Raises:
        InputError: a malformed address or job name, or no dispatcher.
    """
    if job_name is not None and (not isinstance(job_name, str) or not job_name):
        raise errors.InputError(
            "the tf.data service job name must be a non-empty string, or "
            f"None for a job of this trainer alone. Received: {job_name!r}"
        )
    host, port = parse_address(address)
    check_reachable(address, timeout)
    return dataset.apply(
        tf.data.experimental.service.distribute(
            processing_mode="distributed_epoch",
            service=f"grpc://{_join(host, port)}",
            job_name=job_name,
        )
    )


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LocalService(NamedTuple):
    """An in-process dispatcher and its workers (`start_local`)."""

    dispatcher: tf.data.experimental.service.DispatchServer
    workers: list[tf.data.experimental.service.WorkerServer]
    address: str

    def stop(self) -> None:
        """Stops the workers, then the dispatcher."""
        for worker in self.workers:
            worker.stop()
        self.dispatcher.stop()


def start_local(workers: int = 2) -> LocalService:
    """Starts a dispatcher and `workers` workers in this process, on
    loopback ports chosen by the system; for tests and trying things out.

    Args:
        workers: how many workers.

    Returns:
        The servers and the dispatcher's `grpc://localhost:PORT`; call
        `stop()` when done.
    """
    config = tf.data.experimental.service.DispatcherConfig(port=0)
    dispatcher = tf.data.experimental.service.DispatchServer(config)
    address = dispatcher.target
    servers = [
        tf.data.experimental.service.WorkerServer(
            tf.data.experimental.service.WorkerConfig(
                dispatcher_address=address.split("://", 1)[1]
            )
        )
        for _ in range(workers)
    ]
    return LocalService(dispatcher, servers, address)
