"""Shim for `pip install -e .` with older tooling; metadata: setup.cfg."""

import setuptools

setuptools.setup()
