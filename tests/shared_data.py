"""Where the shared corpora are; tests skip with a reason without them."""

import os

import pytest

SHARED_DATA = os.path.join(
    os.path.dirname(__file__), os.pardir, os.pardir, "shared", "data"
)


def shared_data_path(name: str) -> str:
    """Path of a corpus in ../shared/data, or skip the test when absent."""
    path = os.path.abspath(os.path.join(SHARED_DATA, name))
    if not os.path.exists(path):
        pytest.skip(f"{name} not found at {path} (the shared corpora folder)")
    return path
