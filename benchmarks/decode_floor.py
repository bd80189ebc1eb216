"""The floor under a decode step: its matmuls alone, plain graph vs XLA.

One decode step at batch B multiplies B rows by every weight matrix of the
model (per block `query_key_value`, `output`, `mlp_in`, `mlp_out`, then the
tied output head) and attends over the cache (`q @ K^T`, `P @ V`). This
times exactly those matmuls, chained as in a step, in the shapes and the
layout an export stores (`x @ W^T` with `W` stored `(out, in)`, weights
read once before the loop; attention over a float32 cache, as tflm runs it
with any weights), in a `tf.while_loop` of `--steps` steps:

- `plain`: the plain graph (oneDNN's MatMul, XLA off), one product per
  kernel;
- `plain_blocks`: the plain graph with each kernel of 256 KiB or more
  multiplied in the export's row blocks
  (`tflm.models.decode_plan.num_row_blocks`),
  what TF Serving runs;
- `xla`: the same loop under `jit_compile=True`, what in-process tflm and
  keras-hub run.

Each line gives ms per step, the weight bytes read per step, the rate they
are read at, and the new tokens/s that the matmuls alone allow (`B` per
step): no generation in the plain graph can beat it, whatever the rest of
its step costs. The read bandwidth (`generate.read_bandwidth_gbps`) is
measured in the same run.

    python benchmarks/decode_floor.py --presets bench-small,gpt2-124m
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import hostinfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import generate  # noqa: E402


def _weights(config, dtype):
    """`[(qkv, out, mlp_in, mlp_out) per block], head` as `(out, in)`
    variables, scaled so that values keep their size along the chain."""
    import tensorflow as tf

    d, f = config["hidden_dim"], config["intermediate_dim"]

    def var(rows, cols):
        w = tf.random.normal([rows, cols], stddev=cols**-0.5)
        return tf.Variable(tf.cast(w, dtype))

    blocks = [
        (var(3 * d, d), var(d, d), var(f, d), var(d, f))
        for _ in range(config["num_layers"])
    ]
    return blocks, var(config["vocabulary_size"], d)


def step_loop(config, dtype, batch, cache_length, steps, mode):
    """A `tf.function` running `steps` steps of the decode matmuls."""
    import tensorflow as tf

    blocks, head = _weights(config, dtype)
    d, n = config["hidden_dim"], config["num_heads"]
    h = d // n
    # Attention runs in float32 in tflm whatever the weights' type.
    cache = tf.random.normal([batch, n, cache_length, h])

    from tflm.models import decode_plan

    def mm(x, w):
        return decode_plan.times_transposed(x, w)

    def read_kernel(w):
        parts = decode_plan.num_row_blocks(*w.shape, w.dtype)
        if mode != "plain_blocks" or parts == 1:
            return tf.convert_to_tensor(w)
        return decode_plan.split_rows(tf.convert_to_tensor(w), parts)

    @tf.function(jit_compile=mode == "xla", autograph=False)
    def run(x):
        read = [[read_kernel(w) for w in b] for b in blocks]
        table = tf.convert_to_tensor(head)

        def body(i, x, logits):
            for qkv, out, up, down in read:
                q = tf.cast(mm(x, qkv)[:, :d], tf.float32)
                q = tf.reshape(q, [batch, n, 1, h])
                probs = tf.matmul(q, cache, transpose_b=True) / cache_length
                a = tf.reshape(tf.matmul(probs, cache), [batch, d])
                x = mm(mm(mm(tf.cast(a, dtype), out), up), down)
            return i + 1, x, mm(x, table)

        logits = tf.zeros([batch, config["vocabulary_size"]], dtype)
        return tf.while_loop(lambda i, *_: i < steps, body, (0, x, logits))[2]

    x = tf.cast(tf.random.normal([batch, d]), dtype)
    weight_bytes = (
        sum(w.shape.num_elements() * w.dtype.size for b in blocks for w in b)
        + head.shape.num_elements() * head.dtype.size
    )
    return (lambda: run(x).numpy()), weight_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="bench-small")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--cache-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    hostinfo.emit()

    from tflm.models import get_preset

    bandwidth = generate.read_bandwidth_gbps()
    print(json.dumps({"read_bandwidth_GBps": round(bandwidth, 1)}))
    runs = itertools.product(
        args.presets.split(","),
        args.dtypes.split(","),
        map(int, args.batches.split(",")),
        ("plain", "plain_blocks", "xla"),
    )
    for preset, dtype, batch, mode in runs:
        run, nbytes = step_loop(
            get_preset(preset),
            dtype,
            batch,
            args.cache_length,
            args.steps,
            mode,
        )
        step = generate._best(run, args.repeats) / args.steps
        line = {
            "preset": preset,
            "dtype": dtype,
            "batch": batch,
            "graph": mode,
            "ms_per_step": round(step * 1e3, 3),
            "weight_MB": round(nbytes / 1e6, 1),
            "weights_read_GBps": round(nbytes / step / 1e9, 1),
            "bound_new_tokens_per_s": round(batch / step, 1),
            "bandwidth_bound_new_tokens_per_s": round(
                batch * bandwidth * 1e9 / nbytes, 1
            ),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
