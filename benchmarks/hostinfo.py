"""The host every benchmark ran on, in its JSON: the CPU, its core count and
which bfloat16 features it has (`avx512_bf16`, `amx_bf16`; `None` where
/proc/cpuinfo has no flags), which decide whether bfloat16 weights pay.

It loads `tflm/export/host.py` by its path, so that TensorFlow is not
imported before a benchmark has set its environment.
"""

from __future__ import annotations

import importlib.util
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = os.path.join(HERE, "..", "tflm", "export", "host.py")


def describe() -> dict:
    """`tflm.export.host.describe()`: machine, cpu, cpus, bf16_features."""
    spec = importlib.util.spec_from_file_location("tflm_host", HOST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.describe()


def emit() -> None:
    """Prints the host as one JSON line, `{"host": {...}}`."""
    print(json.dumps({"host": describe()}), flush=True)
