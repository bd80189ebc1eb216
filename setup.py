"""Shim so that `pip install -e .` works with older tooling; metadata is in setup.cfg."""

import setuptools

setuptools.setup()
