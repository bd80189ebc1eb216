"""Generation speed: tflm (XLA and plain graph) vs keras-hub and HF.

Greedy decoding of random-weight models, prompt 64 tokens, 192 new tokens,
batch 1 and 8. tflm's rows use `CausalLM.from_preset`; the anchors are
keras-hub's `GPT2CausalLM` and HF transformers' `GPT2LMHeadModel` for
presets of GPT-2's shape (`bench-small`, `gpt2-124m`), `LlamaCausalLM` and
`LlamaForCausalLM` for Llama-shaped ones (`llama-135m`), all of the
preset's shape (`families.py`). Prints one JSON line per measurement: new
tokens/s, time to first token, and, at batch 1, the weight-read bandwidth
limit measured in the same run (`bandwidth_GBps / weight bytes`).

`--beam` measures beam search instead: batch 1 x 4 beams, prompt 64, 128
new tokens (impls `tflm_beam_xla`, `tflm_beam_graph`, `hf_beam`,
`keras_hub_beam`: keras-hub's `BeamSampler`, XLA on). Tokens/s counts the
returned sequence's new tokens, not the beams'.

    python benchmarks/generate.py --presets bench-small,gpt2-124m
    python benchmarks/generate.py --presets llama-135m
    python benchmarks/generate.py --presets bench-small --beam
"""

from __future__ import annotations

import argparse
import json
import os
import time

import hostinfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def read_bandwidth_gbps(megabytes=512, repeats=7):
    """Main-memory read bandwidth: the median of `repeats` sums of an array
    far larger than the caches."""
    import statistics

    import tensorflow as tf

    data = tf.random.uniform([megabytes * (1 << 18)])
    total = tf.function(lambda x: tf.reduce_sum(x))
    total(data)
    times = [_timed(lambda: total(data).numpy()) for _ in range(repeats)]
    return megabytes * (1 << 20) / statistics.median(times) / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _best(fn, repeats):
    fn()  # warm-up: traces and compiles
    return min(_timed(fn) for _ in range(repeats))


def _prompts(batch, length, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, size=(batch, length)).astype("int32")


def bench_tflm(preset, batch, prompt_len, new, repeats, jit, beams=1):
    from tflm.models import CausalLM

    model = CausalLM.from_preset(preset)
    ids = _prompts(batch, prompt_len, model.backbone.vocabulary_size)
    rows = ids.tolist()
    kw = dict(jit_compile=jit)
    if beams > 1:
        kw["num_beams"] = beams  # Beam search takes no stop list.
    else:
        kw["stop"] = []

    def run(n):
        out = model.generate(rows, max_new_tokens=n, return_details=True, **kw)
        # A beam may end at end-of-text; random weights make it rare.
        assert min(out["num_tokens"]) == n, out["num_tokens"]

    total = _best(lambda: run(new), repeats)
    first = _best(lambda: run(1), repeats)
    weights = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    return total, first, weights


def bench_keras_hub(preset, batch, prompt_len, new, repeats, jit, beams=1):
    """keras-hub's `GPT2CausalLM` or `LlamaCausalLM` of `preset`'s shape,
    greedy (or `BeamSampler`). `jit=True` is its fastest setting on a CPU;
    its default `jit_compile="auto"` turns XLA off without a GPU."""
    import families
    import keras_hub

    model = families.keras_hub_model(preset)
    sampler = "greedy"
    if beams > 1:
        sampler = keras_hub.samplers.BeamSampler(num_beams=beams)
    model.compile(sampler=sampler, jit_compile=jit)
    ids = _prompts(batch, prompt_len, model.backbone.vocabulary_size)

    def run(n):
        pad = np.zeros((batch, n), "int32")
        inputs = {
            "token_ids": np.concatenate([ids, pad], 1),
            "padding_mask": np.concatenate([np.ones_like(ids), pad], 1),
        }
        model.generate(inputs, max_length=prompt_len + n, stop_token_ids=None)

    return _best(lambda: run(new), repeats), _best(lambda: run(1), repeats)


def bench_hf(preset, batch, prompt_len, new, repeats, beams=1):
    import families
    import torch

    model = families.hf_model(preset)
    vocab = model.config.vocab_size
    ids = torch.tensor(_prompts(batch, prompt_len, vocab))

    def run(n):
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                num_beams=beams,
                use_cache=True,
                pad_token_id=0,
            )

    return _best(lambda: run(new), repeats), _best(lambda: run(1), repeats)


BEAM_IMPLS = ("tflm_beam_xla", "tflm_beam_graph", "hf_beam", "keras_hub_beam")
NUM_BEAMS = 4
GREEDY_DEFAULTS = {
    "batches": "1,8",
    "new": 192,
    "impls": "tflm_xla,tflm_graph,keras_hub_xla,keras_hub,hf",
}
BEAM_DEFAULTS = {"batches": "1", "new": 128, "impls": ",".join(BEAM_IMPLS)}


def _measure(impl, shape):
    """`(total s, first-token s, weight bytes or None)` of one impl."""
    beams = NUM_BEAMS if "beam" in impl else 1
    jit = impl.endswith("xla") or impl == "keras_hub_beam"
    if impl.startswith("tflm"):
        return bench_tflm(*shape, jit=jit, beams=beams)
    if impl.startswith("keras_hub"):
        return (*bench_keras_hub(*shape, jit=jit, beams=beams), None)
    return (*bench_hf(*shape, beams=beams), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="bench-small,gpt2-124m")
    parser.add_argument("--batches", default=None, help="default: 1,8")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=None, help="default: 192")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", default=None)
    parser.add_argument(
        "--beam",
        action="store_true",
        help="beam search (4 beams); default batch 1, 128 new tokens",
    )
    args = parser.parse_args()
    hostinfo.emit()
    defaults = (BEAM_DEFAULTS if args.beam else GREEDY_DEFAULTS).items()
    for name, value in defaults:
        if getattr(args, name) is None:
            setattr(args, name, value)
    bandwidth = read_bandwidth_gbps()
    print(json.dumps({"read_bandwidth_GBps": round(bandwidth, 1)}), flush=True)
    impls = args.impls.split(",")
    for preset in args.presets.split(","):
        for batch in [int(b) for b in args.batches.split(",")]:
            shape = (preset, batch, args.prompt, args.new, args.repeats)
            weights = None
            for impl in impls:
                try:
                    total, first, bytes_ = _measure(impl, shape)
                    weights = bytes_ or weights
                except ImportError as err:
                    print(json.dumps({"impl": impl, "skipped": str(err)}))
                    continue
                line = {
                    "impl": impl,
                    "preset": preset,
                    "batch": batch,
                    "prompt": args.prompt,
                    "new_tokens": args.new,
                    "num_beams": NUM_BEAMS if "beam" in impl else 1,
                    "new_tokens_per_s": round(batch * args.new / total, 1),
                    "time_to_first_token_ms": round(1000 * first, 1),
                }
                if weights and batch == 1:
                    limit = bandwidth * 1e9 / weights
                    line["bandwidth_limit_tokens_per_s"] = round(limit, 1)
                    line["fraction_of_limit"] = round(
                        line["new_tokens_per_s"] / limit, 3
                    )
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
