import gc
import socket
import time

import pytest

from tflm import errors
from tflm import tokenizers
from tflm.data import prepared
from tflm.data import service
from tflm.data import shards

SEQUENCE_LENGTH = 31


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    paths = []
    for i in range(20):
        path = root / f"part{i:02d}.txt"
        lines = (
            f"file {i} line {j}: the quick brown fox.\n" for j in range(90)
        )
        path.write_text("".join(lines))
        paths.append(str(path))
    shards.prepare(
        paths,
        tokenizers.ByteTokenizer(),
        root / "prep",
        shard_tokens=2000,
        validation_fraction=0.0,
        progress=False,
    )
    return prepared.load(root / "prep")


@pytest.fixture(scope="module")
def local_service():
    started = service.start_local(workers=2)
    yield started
    # Iterators left in reference cycles keep requests open, which a
    # stopping worker waits for (seconds): collect them first.
    gc.collect()
    started.stop()


def _groups(corpus):
    return prepared.window_groups(corpus, "train", SEQUENCE_LENGTH, seed=3)


def _rows(windows):
    return sorted(row.tobytes() for row in windows)


def _local_rows(corpus):
    local = prepared.windows(corpus, "train", SEQUENCE_LENGTH, seed=3)
    return _rows(local.as_numpy_iterator())


def test_distributed_epoch_gives_every_window_once(corpus, local_service):
    # Several groups of shards, so that the dispatcher has work to split.
    assert len(corpus.shards("train")) > 2 * prepared.GROUP_SHARDS
    dataset = service.distribute(_groups(corpus), local_service.address)
    rows = _rows(dataset.unbatch().as_numpy_iterator())
    assert len(rows) == prepared.count_windows(corpus, "train", SEQUENCE_LENGTH)
    assert rows == _local_rows(corpus)


def test_trainers_sharing_a_job_name_split_the_epoch(corpus, local_service):
    trainers = [
        iter(service.distribute(_groups(corpus), local_service.address, "j"))
        for _ in range(2)
    ]
    windows = []
    while trainers:
        for trainer in list(trainers):
            group = next(trainer, None)
            if group is None:
                trainers.remove(trainer)
            else:
                windows.extend(group.numpy())
    assert _rows(windows) == _local_rows(corpus)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port():
    """A port whose full accept queue leaves new connections hanging."""
    with socket.socket() as listener:
        listener.bind(("localhost", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        pending = []
        try:
            for _ in range(8):
                client = socket.socket()
                pending.append(client)
                client.settimeout(0.2)
                try:
                    client.connect(("localhost", port))
                except TimeoutError:
                    break
            else:
                pytest.skip("this system accepts connections beyond backlog")
            yield port
        finally:
            for client in pending:
                client.close()


def _refused_in_time(corpus, address, reason):
    start = time.monotonic()
    with pytest.raises(errors.InputError, match="cannot reach") as raised:
        service.distribute(_groups(corpus), address, timeout=1.0)
    assert time.monotonic() - start < 1.0 + 2.0
    message = str(raised.value)
    assert address in message and reason in message
    assert "\n" not in message


def test_closed_port_is_refused_in_time(corpus):
    address = f"grpc://localhost:{_free_port()}"
    _refused_in_time(corpus, address, "Connection refused")


def test_silent_port_times_out(corpus, silent_port):
    address = f"grpc://localhost:{silent_port}"
    _refused_in_time(corpus, address, "timed out")


def test_reachable_listener_passes():
    with socket.socket() as listener:
        listener.bind(("localhost", 0))
        listener.listen()
        service.check_reachable(f"localhost:{listener.getsockname()[1]}")


@pytest.mark.parametrize(
    "address, expected",
    [
        ("grpc://dispatcher:5050", ("dispatcher", 5050)),
        ("10.0.0.7:80", ("10.0.0.7", 80)),
        ("grpc://[::1]:5050", ("::1", 5050)),
    ],
)
def test_parse_address(address, expected):
    assert service.parse_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "",
        "localhost",
        "http://localhost:5050",
        "grpc://:5050",
        "grpc://localhost:port",
        "grpc://localhost:0",
        "grpc://localhost:65536",
        "grpc://localhost:5050/path",
        "grpc://a b:5050",
    ],
)
def test_malformed_address_is_refused(address):
    with pytest.raises(errors.InputError, match="grpc://HOST:PORT"):
        service.check_reachable(address)


def test_empty_job_name_is_refused(corpus, local_service):
    with pytest.raises(errors.InputError, match="job name"):
        service.distribute(_groups(corpus), local_service.address, "")
