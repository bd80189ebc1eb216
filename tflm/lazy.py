"""A package's names imported on first use (PEP 562 `__getattr__`), so that
importing one light submodule (presets, the training config) for the CLI's
flags does not load Keras and TensorFlow.

Example:
>>> __getattr__ = exports("pkg", {"dumps": "json"})
>>> __getattr__("dumps")({"a": 1})
'{"a": 1}'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exports(package: str, names: dict[str, str]) -> Callable:
    """The `__getattr__` of `package`: each name of `names` is read from
    its module (`name -> module path`) when first asked for."""

    def __getattr__(name):
        if name not in names:
            raise AttributeError(
                f"module {package!r} has no attribute {name!r}"
            )
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__
