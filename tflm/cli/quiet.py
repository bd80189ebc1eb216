"""Keeps TensorFlow's, absl's, oneDNN's and SentencePiece's C++ logging off
the user's terminal.

Their C++ code writes straight to file descriptor 2, past Python, and some of
it ignores `TF_CPP_MIN_LOG_LEVEL` (`E0000 ... oneDNN ...`, SentencePiece's
`normalizer.cc(51) LOG(INFO) ...`). `QuietStderr` points descriptor 2 at a
pipe read by a thread that drops those lines and forwards every other line,
while Python's own `sys.stderr` (tflm's messages, progress bars) writes to
the real terminal directly, unbuffered by the filter.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings

# absl/glog lines ("I0000 00:00:...", "W1201 ..."), SentencePiece's
# "file.cc(12) LOG(INFO) ...", and TensorFlow's start-up notices.
_NOISE = re.compile(
    rb"^\s*(?:[IWE]\d{4} \d\d:\d\d:\d"
    rb"|\S+\.cc\(\d+\) LOG\("
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|To enable the following instructions:"
    rb"|oneDNN custom operations are on)"
)


def is_noise(line: bytes) -> bool:
    """Whether one line of C++ logging is hidden in a normal run.

    Fatal lines (`F0000 ...`, `Check failed`) are never noise.

    Example:
    >>> is_noise(b"E0000 00:00:17.1 1 util.cc:131] oneDNN supports ...")
    True
    >>> is_noise(b"normalizer.cc(51) LOG(INFO) precompiled_charsmap")
    True
    >>> is_noise(b"F0000 00:00:17.1 1 check.cc:1] Check failed")
    False
    """
    return bool(_NOISE.match(line))


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False  # a capture object (pytest's capsys), not the terminal


class QuietStderr:
    """Context manager: filters C++ log lines off descriptor 2.

    On entry `sys.stderr` moves to a duplicate of the real descriptor 2, so
    Python output is unchanged; child processes inherit the filtered
    descriptor. On exit everything is flushed and restored.
    """

    def __enter__(self) -> QuietStderr:
        sys.stderr.flush()
        self._real = os.dup(2)
        self._old_stderr = sys.stderr
        if _writes_to_fd2(sys.stderr):
            sys.stderr = open(  # noqa: SIM115 - restored in __exit__
                self._real, "w", buffering=1, closefd=False, errors="replace"
            )
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(
            target=self._forward, args=(read,), daemon=True
        )
        self._thread.start()
        return self

    def _forward(self, read: int) -> None:
        with open(read, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if not is_noise(line):
                        os.write(self._real, line + b"\n")
            if pending and not is_noise(pending):
                os.write(self._real, pending)

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self._real, 2)  # closes the pipe's last write end
        self._thread.join(timeout=5)
        sys.stderr = self._old_stderr
        os.close(self._real)


def quiet_python_logging() -> None:
    """Raises the Python loggers of TensorFlow, absl, h5py and the gguf
    writer to ERROR and hides library warnings (tflm's own messages use
    `logging`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl", "h5py", "gguf"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(keras|tensorflow|absl)\b.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
