"""What the host CPU offers for running bfloat16 weights.

bfloat16 weights pay on a CPU that multiplies bfloat16 natively: AVX-512
BF16 (`avx512_bf16` in `/proc/cpuinfo`; Intel Cooper Lake, Sapphire Rapids
and later, AMD Zen 4 and later) or AMX-BF16 (`amx_bf16`; Intel Sapphire
Rapids and later). Without them TensorFlow's CPU kernels convert bfloat16 to
float32 as they go, and a bfloat16 export serves slower than float32 (see
`export/README.md`). The flags are read on Linux only; elsewhere nothing is
known, and nothing is said.
"""

from __future__ import annotations

import os
import platform

CPUINFO = "/proc/cpuinfo"
# /proc/cpuinfo flag -> the feature's name.
BF16_FEATURES = {"avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16"}


def _cpuinfo(path: str | None) -> dict[str, str]:
    """The first processor's `key: value` lines; empty if unreadable."""
    fields = {}
    try:
        with open(path or CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags(path: str | None = None) -> frozenset[str] | None:
    """The CPU's feature flags; `None` where `path` (default `CPUINFO`) has
    no `flags` line (not Linux, or not x86).

    Example:
    >>> cpu_flags("/no/such/file") is None
    True
    """
    flags = _cpuinfo(path).get("flags")
    return None if flags is None else frozenset(flags.split())


def bf16_features(flags: frozenset[str] | None) -> dict[str, bool] | None:
    """Which bfloat16 features `flags` has; `None` when they are unknown.

    Example:
    >>> bf16_features(frozenset({"avx2", "amx_bf16"}))
    {'avx512_bf16': False, 'amx_bf16': True}
    """
    if flags is None:
        return None
    return {flag: flag in flags for flag in BF16_FEATURES}


def bf16_warning(flags: frozenset[str] | None) -> str | None:
    """One line for a bfloat16 export on a CPU without the features that
    make it pay; `None` when it has one or nothing is known.

    Example:
    >>> bf16_warning(frozenset({"avx512f"})).startswith("This CPU has")
    True
    >>> bf16_warning(frozenset({"avx512_bf16"})) is None
    True
    """
    features = bf16_features(flags)
    if features is None or any(features.values()):
        return None
    return (
        "This CPU has neither AVX-512 BF16 nor AMX-BF16 (no avx512_bf16 or "
        "amx_bf16 in /proc/cpuinfo): on it, bfloat16 weights serve slower "
        "than float32. Serve this export on a CPU that has one of them, or "
        "export float32 weights (see export/README.md, bfloat16 weights)."
    )


def describe(path: str | None = None) -> dict:
    """The host, as the benchmarks record it."""
    return {
        "machine": platform.machine(),
        "cpu": _cpuinfo(path).get("model name") or platform.processor(),
        "cpus": os.cpu_count(),
        "bf16_features": bf16_features(cpu_flags(path)),
    }
