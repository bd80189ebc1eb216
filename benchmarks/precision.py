"""Quality, size and plain-graph speed of bfloat16 and int8 weights.

    python benchmarks/precision.py [--data FILE] [--steps 200]

Prints one JSON line per measurement:
- `quality`: perplexity on held-out text (mean over sequences, float32 log
  softmax) for each weight type against float32, and the share of the first
  64 greedy tokens that agree with float32's, for nano-char trained here on
  `--data` (bytes) and for a random-weight GPT-2-shaped model;
- `size`: the exported SavedModel's size and the model directory's weights
  file, as a fraction of float32's;
- `speed`: bench-small greedy decode in the plain graph (no XLA), batch 1,
  64 prompt + 192 new tokens, variants run alternately, median of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import hostinfo
import keras
import numpy as np
import tensorflow as tf

from tflm import export as export_lib
from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.models import weights as weights_lib
from tflm.tokenizers import ByteTokenizer

TYPES = ("float32", "bfloat16", "int8")
SPEED_VARIANTS = {
    "float32": None,
    "bfloat16": dict(weights="bfloat16"),
    "int8 (bf16 matmul, default)": dict(weights="int8"),
    "int8 (f32 matmul)": dict(weights="int8", int8_compute="float32"),
    "int8 projections, bf16 embedding": dict(
        weights="int8", int8_embedding=False
    ),
    "int8 W8A8 (Keras default)": dict(
        weights="int8", int8_compute="float32", int8_activations=True
    ),
}


def emit(**record):
    print(json.dumps(record), flush=True)


def perplexity(lm, sequences: np.ndarray) -> float:
    x = {
        "token_ids": sequences[:, :-1],
        "padding_mask": np.ones_like(sequences[:, :-1]),
    }
    logits = lm.predict(x, batch_size=8, verbose=0)
    log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
    picked = np.take_along_axis(log_probs, sequences[:, 1:, None], -1)
    return float(np.exp(-picked.mean()))


def agreement(lm, reference: list, prompts: list) -> float:
    out = lm.generate(prompts, 64, jit_compile=False)
    same = [
        np.mean(np.asarray(a) == np.asarray(b))
        for a, b in zip(out, reference, strict=True)
    ]
    return float(np.mean(same))


def quality(name: str, lm, held_out: np.ndarray, prompts: list) -> None:
    reference_ppl = perplexity(lm, held_out)
    reference = lm.generate(prompts, 64, jit_compile=False)
    emit(
        kind="quality", model=name, weights="float32", perplexity=reference_ppl
    )
    for weights in TYPES[1:]:
        converted = weights_lib.converted(lm, weights)
        ppl = perplexity(converted, held_out)
        emit(
            kind="quality",
            model=name,
            weights=weights,
            perplexity=ppl,
            perplexity_change=ppl / reference_ppl - 1,
            greedy_agreement_64=agreement(converted, reference, prompts),
        )


def train_nano_char(path: str, steps: int):
    data = np.frombuffer(open(path, "rb").read(), np.uint8).astype("int32")
    split = int(len(data) * 0.9)
    # A 128-token context leaves room for 16 prompt + 64 greedy tokens.
    lm = causal_lm.CausalLM.from_preset("nano-char", max_sequence_length=128)
    context = lm.backbone.max_sequence_length
    rng = np.random.default_rng(0)

    def batch(source, size):
        starts = rng.integers(0, len(source) - context - 1, size)
        return np.stack([source[s : s + context + 1] for s in starts])

    lm.compile(learning_rate=1e-3)
    train = batch(data[:split], steps * 16)
    lm.fit(
        {
            "token_ids": train[:, :-1],
            "padding_mask": np.ones_like(train[:, :-1]),
        },
        train[:, 1:],
        batch_size=16,
        epochs=1,
        verbose=0,
    )
    held_out = batch(data[split:], 64)
    prompts = [row[:16].tolist() for row in batch(data[split:], 4)]
    return lm, held_out, prompts


def sizes(name: str, original, work: str) -> None:
    tokenizer = original.tokenizer or ByteTokenizer()
    # An uncompiled copy: a compiled model's weights file holds the
    # optimizer's variables too.
    lm = type(original).from_config(original.get_config())
    lm.set_weights(original.get_weights())
    lm.tokenizer = tokenizer
    base = {}
    for weights in TYPES:
        path = export_lib.export(
            lm, os.path.join(work, name, weights), weights=weights
        )
        export_bytes = _size(path)
        directory = os.path.join(work, name, weights + "-dir")
        model_dir.save(
            weights_lib.converted(lm, weights), lm.tokenizer, directory
        )
        weight_bytes = os.path.getsize(
            os.path.join(directory, model_dir.WEIGHTS_FILE)
        )
        base.setdefault("export", export_bytes)
        base.setdefault("weights", weight_bytes)
        emit(
            kind="size",
            model=name,
            weights=weights,
            export_mb=export_bytes / 1e6,
            export_ratio=export_bytes / base["export"],
            weights_file_ratio=weight_bytes / base["weights"],
        )


def _size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    )


def speed(repeats: int = 3) -> None:
    prompt = np.random.default_rng(0).integers(0, 8192, (1, 64)).tolist()
    models = {}
    for name, plan in SPEED_VARIANTS.items():
        keras.utils.set_random_seed(0)
        lm = causal_lm.CausalLM.from_preset("bench-small")
        if plan:
            weights_lib._convert(lm, **plan)
        lm.generate(prompt, 192, jit_compile=False)  # trace
        models[name] = lm
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, lm in models.items():
            start = time.perf_counter()
            lm.generate(prompt, 192, jit_compile=False)
            times[name].append(time.perf_counter() - start)
    for name, runs in times.items():
        emit(
            kind="speed",
            model="bench-small",
            variant=name,
            batch=1,
            new_tokens_per_s=192 / statistics.median(runs),
            runs_s=[round(r, 3) for r in runs],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=os.path.join(
            os.path.dirname(__file__),
            "..",
            "..",
            "shared",
            "data",
            "tinyshakespeare.txt",
        ),
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("trained", "gpt2", "size", "speed"),
    )
    args = parser.parse_args()
    hostinfo.emit()
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as work:
        if "trained" not in args.skip:
            lm, held_out, prompts = train_nano_char(args.data, args.steps)
            quality("nano-char", lm, held_out, prompts)
            if "size" not in args.skip:
                sizes("nano-char", lm, work)
        if "gpt2" not in args.skip:
            lm = causal_lm.CausalLM.from_preset(
                "gpt2-124m", max_sequence_length=128
            )
            rng = np.random.default_rng(0)
            held_out = rng.integers(0, 50257, (8, 129)).astype("int32")
            prompts = [row[:16].tolist() for row in held_out[:2]]
            quality("gpt2-124m (random weights)", lm, held_out, prompts)
            if "size" not in args.skip:
                sizes("gpt2-124m", lm, work)
        if "speed" not in args.skip:
            speed()


if __name__ == "__main__":
    main()
