"""`tflm version`: print the versions that matter for a bug report."""

from __future__ import annotations

import argparse

from tflm.cli import common


def add(subparsers) -> None:
    parser = common.add_command(
        subparsers,
        "version",
        help="print the versions of tflm, TensorFlow and Keras",
        example="tflm version",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import keras
    import tensorflow as tf

    import tflm

    print(f"tflm {tflm.__version__}")
    print(f"tensorflow {tf.__version__}")
    print(f"keras {keras.__version__}")
    return 0
