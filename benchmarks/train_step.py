"""Training throughput: tflm vs keras-hub `GPT2CausalLM`, same shape.

Each measurement runs in a fresh subprocess (so peak RSS is its own) and
prints one JSON line: tokens/s through `model.fit` (forward, loss, backward,
AdamW with global-norm clipping, the same optimizer for both; tflm through
its own train step, keras-hub through Keras' default one with Keras'
cross-entropy), peak RSS, and the ratio to keras-hub under
the same dtype policy and `jit_compile` setting; then a summary of each
implementation and policy at its fastest `jit_compile` setting, with the
ratios the targets name (bf16 over fp32, tflm over keras-hub).

    python benchmarks/train_step.py --preset bench-small --batch 8 --seq 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import hostinfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _dataset(vocab, batch, seq, seed=0):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch * 4, seq + 1), dtype=np.int32)
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    ds = tf.data.Dataset.from_tensor_slices((x, ids[:, 1:]))
    return ds.repeat().batch(batch, drop_remainder=True).prefetch(2)


def _build(impl, preset, policy):
    import keras

    from tflm.models import CausalLM
    from tflm.models import causal_lm
    from tflm.models import get_preset

    keras.config.set_dtype_policy(policy)
    config = get_preset(preset)
    if impl == "tflm":
        model = CausalLM.from_preset(preset)
    else:
        from families import keras_hub_gpt2

        model = keras_hub_gpt2(preset)
    return model, config, causal_lm.default_optimizer()


def measure(impl, preset, policy, jit, batch, seq, steps, warmup):
    import keras

    model, config, optimizer = _build(impl, preset, policy)
    if impl == "tflm":
        # tflm's own recipe (`tflm.models.train_step`), as `tflm train` and
        # `CausalLM.compile()` run it; no metrics, as for keras-hub.
        model.compile(optimizer=optimizer, weighted_metrics=[], jit_compile=jit)
    else:
        keras.Model.compile(
            model,
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            times.append(time.perf_counter())

    data = _dataset(config["vocabulary_size"], batch, seq)
    model.fit(
        data,
        steps_per_epoch=warmup + steps,
        epochs=1,
        verbose=0,
        callbacks=[Timer()],
    )
    elapsed = times[-1] - times[warmup - 1]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "impl": impl,
        "preset": preset,
        "policy": policy,
        "jit_compile": jit,
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "tokens_per_s": round(batch * seq * steps / elapsed, 1),
        "step_ms": round(1000 * elapsed / steps, 2),
        "peak_rss_mb": round(peak_mb, 1),
    }


def _run_child(args, impl, policy, jit):
    cmd = [
        sys.executable,
        __file__,
        "--child",
        impl,
        policy,
        str(jit),
        "--preset",
        args.preset,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return {
            "impl": impl,
            "policy": policy,
            "jit_compile": jit,
            "error": out.stderr.strip().splitlines()[-1:],
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--policies", default="float32,mixed_bfloat16", help="comma list"
    )
    parser.add_argument("--jit", default="true,false", help="comma list")
    parser.add_argument("--impls", default="tflm,keras_hub")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "POLICY", "JIT"))
    args = parser.parse_args()
    if args.child:
        impl, policy, jit = args.child
        result = measure(
            impl,
            args.preset,
            policy,
            jit == "True",
            args.batch,
            args.seq,
            args.steps,
            args.warmup,
        )
        print(json.dumps(result))
        return
    hostinfo.emit()
    results = {}
    for policy in args.policies.split(","):
        for jit in [j == "true" for j in args.jit.split(",")]:
            for impl in args.impls.split(","):
                result = _run_child(args, impl, policy, jit)
                results[(impl, policy, jit)] = result
                ref = results.get(("keras_hub", policy, jit), {})
                mine = results.get(("tflm", policy, jit), {})
                if (
                    impl == "keras_hub"
                    and "tokens_per_s" in mine
                    and "tokens_per_s" in ref
                ):
                    result["tflm_over_keras_hub"] = round(
                        mine["tokens_per_s"] / ref["tokens_per_s"], 3
                    )
                    result["tflm_rss_over_keras_hub"] = round(
                        mine["peak_rss_mb"] / ref["peak_rss_mb"], 3
                    )
                print(json.dumps(result), flush=True)
    # Each implementation and policy at its fastest `jit_compile` setting.
    best = {}
    for (impl, policy, jit), result in results.items():
        speed = result.get("tokens_per_s")
        if speed and speed > best.get((impl, policy), (0, None))[0]:
            best[impl, policy] = (speed, jit)
    summary = {
        f"best_{impl}_{policy}": {"tokens_per_s": speed, "jit_compile": jit}
        for (impl, policy), (speed, jit) in sorted(best.items())
    }
    pairs = {
        "tflm_bf16_over_tflm_fp32": (
            ("tflm", "mixed_bfloat16"),
            ("tflm", "float32"),
        ),
        "tflm_bf16_over_keras_hub_bf16": (
            ("tflm", "mixed_bfloat16"),
            ("keras_hub", "mixed_bfloat16"),
        ),
        "tflm_fp32_over_keras_hub_fp32": (
            ("tflm", "float32"),
            ("keras_hub", "float32"),
        ),
    }
    for name, (mine, theirs) in pairs.items():
        if mine in best and theirs in best:
            summary[name] = round(best[mine][0] / best[theirs][0], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
