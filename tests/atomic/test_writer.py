"""The crash-safe directory writer: replace rules, symlinks, kills, ENOSPC."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from tflm import atomic
from tflm import errors
from tflm.atomic import writer


def _write(text):
    def write(folder):
        with open(os.path.join(folder, "data"), "w") as f:
            f.write(text)

    return write


def _hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_write_then_refuse_then_overwrite_keeping_other_files(tmp_path):
    target = tmp_path / "out"
    assert atomic.write_directory(target, _write("1")) == str(target)
    (target / "NOTES.md").write_text("mine")
    with pytest.raises(errors.InputError, match="already holds data"):
        atomic.write_directory(target, _write("2"), owned=["data"])
    assert (target / "data").read_text() == "1"
    atomic.write_directory(target, _write("2"), owned=["data"], overwrite=True)
    assert (target / "data").read_text() == "2"
    assert (target / "NOTES.md").read_text() == "mine"
    assert _hidden(tmp_path) == []
    # owned=None replaces the folder whole.
    atomic.write_directory(target, _write("3"), overwrite=True)
    assert sorted(os.listdir(target)) == ["data"]


def test_a_folder_of_unrelated_files_is_written_into(tmp_path):
    (tmp_path / "NOTES.md").write_text("mine")
    atomic.write_directory(tmp_path, _write("1"), owned=["data"])
    assert sorted(os.listdir(tmp_path)) == ["NOTES.md", "data"]


def test_failure_keeps_the_old_directory_and_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    atomic.write_directory(target, _write("1"))

    def fail(folder):
        _write("half")(folder)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic.write_directory(target, fail, overwrite=True)
    assert (target / "data").read_text() == "1"
    assert _hidden(tmp_path) == []


def test_full_disk_is_a_clear_error_and_keeps_the_old_directory(tmp_path):
    target = tmp_path / "out"
    atomic.write_directory(target, _write("1"))

    def fill(folder):
        _write("partial")(folder)
        with open("/dev/full", "wb") as f:  # a real write that hits ENOSPC
            f.write(b"x" * 65536)
            f.flush()

    with pytest.raises(atomic.NoSpaceError, match="No space left on") as info:
        atomic.write_directory(target, fill, overwrite=True)
    assert "the write ran out after 0.0 MB" in str(info.value)
    assert info.value.directory == str(tmp_path)
    assert (target / "data").read_text() == "1"
    assert _hidden(tmp_path) == []


def test_a_write_that_cannot_fit_is_refused_before_it_starts(tmp_path):
    free = atomic.free_bytes(str(tmp_path))
    atomic.check_space(str(tmp_path), free // 2)
    with pytest.raises(atomic.NoSpaceError) as info:
        atomic.check_space(str(tmp_path), free + 5_000_000_000)
    assert str(info.value).startswith(f"No space left on {tmp_path}: ")
    # About 5,000 MB short (what else runs here may write meanwhile).
    assert re.search(
        r"Free at least (4,9|5,0)\d\d MB and rerun\. Nothing was "
        r"written\.$",
        str(info.value),
    )


def test_symlinked_target_is_written_through(tmp_path):
    real = tmp_path / "real_model"
    atomic.write_directory(real, _write("1"))
    (real / "NOTES.md").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real)
    path = atomic.write_directory(
        link, _write("2"), owned=["data"], overwrite=True
    )
    assert path == str(real)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "data").read_text() == "2"
    assert (real / "NOTES.md").read_text() == "mine"
    assert _hidden(tmp_path) == []


def test_dangling_symlink_and_file_are_refused(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(errors.InputError, match="does not exist"):
        atomic.write_directory(link, _write("1"))
    assert sorted(os.listdir(tmp_path)) == ["link"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.InputError, match="is a file"):
        atomic.write_directory(tmp_path / "file", _write("1"))


def test_leftovers_of_dead_runs_are_swept_and_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    atomic.write_directory(target, _write("1"))
    host, dead = writer._HOST, _dead_pid()
    temp = tmp_path / f".out.tflm-tmp-{host}-{dead}-abc"
    temp.mkdir()
    (temp / "data").write_text("half")
    # An old directory whose entries were not moved yet (killed after the
    # swap): its notes go into the target.
    old = tmp_path / f".out.tflm-old-{host}-{dead}-def"
    old.mkdir()
    (old / "NOTES.md").write_text("mine")
    live = tmp_path / f".out.tflm-tmp-{host}-{os.getpid()}-ghi"
    live.mkdir()
    atomic.write_directory(target, _write("2"), owned=["data"], overwrite=True)
    assert (target / "NOTES.md").read_text() == "mine"
    assert _hidden(tmp_path) == [live.name]


def test_a_directory_renamed_aside_is_restored(tmp_path):
    target = tmp_path / "out"
    atomic.write_directory(target, _write("1"))
    old = tmp_path / f".out.tflm-old-{writer._HOST}-{_dead_pid()}-abc"
    os.rename(target, old)
    atomic.sweep(str(tmp_path), "out", ["data"])
    assert (target / "data").read_text() == "1"
    assert _hidden(tmp_path) == []


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from tflm import atomic

    def write(folder):
        for i in range(20):
            with open(os.path.join(folder, f"part{i}"), "wb") as f:
                f.write(os.urandom(1 << 16))
        with open(os.path.join(folder, "done"), "w") as f:
            f.write("yes")

    print("ready", flush=True)
    while True:
        atomic.write_directory(
            sys.argv[1], write, owned=["done"] + [f"part{i}" for i in
            range(20)], overwrite=True)
    """
)


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5])
def test_a_killed_writer_leaves_the_old_or_the_new_directory(tmp_path, delay):
    target = tmp_path / "out"
    target.mkdir()
    (target / "NOTES.md").write_text("mine")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    threading.Event().wait(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    atomic.sweep(
        str(tmp_path), "out", ["done"] + [f"part{i}" for i in range(20)]
    )
    assert (target / "NOTES.md").read_text() == "mine"
    names = set(os.listdir(target))
    assert names in (
        {"NOTES.md"},
        {"NOTES.md", "done", *(f"part{i}" for i in range(20))},
    )
    assert _hidden(tmp_path) == []


def test_concurrent_claims_get_distinct_names(tmp_path):
    """What export does: many writers race for the next free number."""
    barrier = threading.Barrier(8)
    claimed = {}

    def claim(i):
        with atomic.staged(str(tmp_path), "race") as temp:
            _write(str(i))(temp)
            barrier.wait()
            number = 1
            while not atomic.publish(
                temp, str(tmp_path / str(number)), replace=False
            ):
                number += 1
            claimed[i] = number

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed.values()) == list(range(1, 9))
    for i, number in claimed.items():
        assert (tmp_path / str(number) / "data").read_text() == str(i)
