"""Fine-tuning benchmark; prints JSON.

1. The synthetic task (reverse 3-letter strings) on a small byte-level
   model: exact match on held-out examples before and after, and wall time,
   for full fine-tuning (and LoRA when `tflm.models.lora` exists).
2. gpt2-124m (random weights) at batch 4 x 256 tokens: training tokens/s
   and the peak RSS of full fine-tuning vs LoRA rank 8 (each in its own
   process, so that peaks do not mix), with the step compiled by XLA (the
   default of `tflm finetune` on one device) and as a plain graph, and the
   LoRA/full ratios at each setting.

Usage: python benchmarks/finetune.py [--skip-gpt2] [--skip-synthetic]
           [--steps N] [--gpt2-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

import hostinfo


def _reversal(path, count, seed):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(count):
            word = "".join(rng.choice("abcdefgh") for _ in range(3))
            f.write(json.dumps({"prompt": word, "completion": word[::-1]}))
            f.write("\n")
    return path


def _exact_match(directory, path):
    from tflm.models import causal_lm
    from tflm.train import task_metrics

    lm = causal_lm.CausalLM.from_preset(directory)
    conversations = []
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        conversations.append(
            [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"]},
            ]
        )
    got = task_metrics.greedy_completions(lm, conversations, 4)
    wanted = [c[-1]["content"] for c in conversations]
    return sum(g == w for g, w in zip(got, wanted, strict=True)) / len(wanted)


def synthetic(root, steps, lora_rank=None):
    import keras

    from tflm import tokenizers
    from tflm.models import backbone as backbone_lib
    from tflm.models import causal_lm
    from tflm.train import config as config_lib
    from tflm.train import fit

    root = os.path.join(root, f"lora-{lora_rank}")
    os.makedirs(root)
    tokenizer = tokenizers.ByteTokenizer()
    keras.utils.set_random_seed(0)
    lm = causal_lm.CausalLM(
        backbone_lib.Backbone(
            vocabulary_size=tokenizer.vocabulary_size,
            num_layers=2,
            num_heads=4,
            hidden_dim=64,
            intermediate_dim=128,
            max_sequence_length=40,
        )
    )
    lm.tokenizer = tokenizer
    parent = lm.save_to_preset(os.path.join(root, "parent"))
    train = _reversal(os.path.join(root, "train.jsonl"), 300, 0)
    heldout = _reversal(os.path.join(root, "heldout.jsonl"), 100, 1)
    before = _exact_match(parent, heldout)
    start = time.perf_counter()
    result = fit.train(
        config_lib.TrainConfig(
            data=[train],
            out=os.path.join(root, "tuned"),
            init_from=parent,
            data_format="task",
            steps=steps,
            batch_size=16,
            learning_rate=3e-3 if lora_rank is None else 1e-2,
            warmup_steps=10,
            weight_decay=0.0,
            checkpoint_every=100,
            validate_every=100,
            lora_rank=lora_rank,
        ),
        verbose=0,
    )
    seconds = time.perf_counter() - start
    return {
        "exact_match_before": before,
        "exact_match_after": _exact_match(result.directory, heldout),
        "wall_seconds": round(seconds, 2),
        "steps": steps,
    }


def gpt2_child(lora_rank, steps, jit_compile):
    """Runs in a child: times `steps` updates of gpt2-124m at 4 x 256."""
    import numpy as np
    import tensorflow as tf

    from tflm.models import causal_lm
    from tflm.models import train_step

    lm = causal_lm.CausalLM.from_preset("gpt2-124m")
    # TensorFlow and the model's weights: what neither setting can shed.
    built_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if lora_rank:
        from tflm.models import lora

        lora.enable_lora(lm, rank=lora_rank)
    lm.compile(jit_compile=jit_compile)
    optimizer = lm.optimizer
    optimizer.build(lm.trainable_variables)
    ids = np.random.RandomState(0).randint(0, 50000, (4, 257)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((4, 256), bool)}
    data = (x, ids[:, 1:])

    @tf.function(jit_compile=jit_compile)
    def step(data):
        return train_step.apply(lm, optimizer, data)[0]

    step(data)  # Compiles.
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(data)
    float(loss)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "tokens_per_second": 4 * 256 * steps / seconds,
                "peak_rss_mb": round(peak_mb, 1),
                "rss_after_build_mb": round(built_mb, 1),
            }
        )
    )


def _gpt2(lora_rank, steps, jit_compile):
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            "--gpt2-child",
            str(lora_rank or 0),
            "--steps",
            str(steps),
            "--jit-compile",
            str(int(jit_compile)),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--gpt2-steps", type=int, default=5)
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--gpt2-child", type=int, default=None)
    parser.add_argument("--jit-compile", type=int, default=1)
    args = parser.parse_args()
    if args.gpt2_child is not None:
        return gpt2_child(args.gpt2_child, args.steps, bool(args.jit_compile))
    report = {"host": hostinfo.describe()}
    if not args.skip_synthetic:
        with tempfile.TemporaryDirectory() as root:
            report["synthetic_full"] = synthetic(root, args.steps)
            report["synthetic_lora8"] = synthetic(root, args.steps, 8)
    if not args.skip_gpt2:
        for setting, jit_compile in (("xla", True), ("plain_graph", False)):
            full = _gpt2(None, args.gpt2_steps, jit_compile)
            lora = _gpt2(8, args.gpt2_steps, jit_compile)
            report[f"gpt2_124m_{setting}"] = {
                "full": full,
                "lora8": lora,
                "lora_over_full_peak_rss": round(
                    lora["peak_rss_mb"] / full["peak_rss_mb"], 3
                ),
                "lora_over_full_tokens_per_second": round(
                    lora["tokens_per_second"] / full["tokens_per_second"], 3
                ),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
