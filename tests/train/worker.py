"""Runs one training in a fresh process, for tests that need one.

    python worker.py '{"config": {...}, "logical_cpus": 2,
                       "weights": "out.npz"}'

`config` holds `TrainConfig` arguments. With `logical_cpus`, the CPU is
split into that many logical devices first. With `weights`, the trained
weights are written there as one flat array.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(spec):
    import numpy as np
    import tensorflow as tf

    if spec.get("logical_cpus"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu,
            [tf.config.LogicalDeviceConfiguration()] * spec["logical_cpus"],
        )
    from tflm.train import config as config_lib
    from tflm.train import fit

    result = fit.train(config_lib.TrainConfig(**spec["config"]), verbose=0)
    if spec.get("weights"):
        weights = [np.ravel(w) for w in result.model.get_weights()]
        np.save(spec["weights"], np.concatenate(weights))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
