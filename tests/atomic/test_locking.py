"""The per-target lock: one writer at a time, re-entrant in its thread."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from tflm import atomic
from tflm import errors

HOLD = textwrap.dedent(
    """
    import sys
    from tflm import atomic

    with atomic.lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_another_process_is_refused_until_it_ends(tmp_path):
    target = tmp_path / "model"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(errors.InputError, match=f"pid {proc.pid}"):
            with atomic.lock(target):
                pass
        with pytest.raises(errors.InputError, match="another tflm run"):
            atomic.write_directory(target, lambda folder: None)
        assert not target.exists()
    finally:
        proc.communicate("\n", timeout=30)
    with atomic.lock(target):
        pass
    assert os.listdir(tmp_path) == []  # the lock file is gone


def test_reentrant_in_a_thread_exclusive_across_threads(tmp_path):
    target = tmp_path / "model"
    errors_seen = []

    def other():
        try:
            with atomic.lock(target):
                pass
        except errors.InputError as err:
            errors_seen.append(err)

    with atomic.lock(target):
        with atomic.lock(target):
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        assert (tmp_path / ".model.tflm-lock").exists()
    assert len(errors_seen) == 1
    assert not (tmp_path / ".model.tflm-lock").exists()


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    (tmp_path / ".model.tflm-lock").write_text("12345\n")
    with atomic.lock(tmp_path / "model"):
        pass
    assert os.listdir(tmp_path) == []
