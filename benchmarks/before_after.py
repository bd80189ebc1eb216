"""Before/after: this checkout's tflm against another checkout's, in one
process, alternating, on the same weights, prompts and machine load.

The other checkout's `tflm` package is copied under the name `tflm_base`
(its imports renamed), so both load side by side. Rows, for bench-small
with a vocab-8192 SentencePiece tokenizer trained on Tiny Shakespeare,
prompts of exactly 64 tokens, greedy:

- phase 1 (XLA allowed): in-process `generate` with XLA and in the plain
  graph (192 new tokens, batch 1 and 8), and 4-beam search (128 new
  tokens, batch 1), each `new` and `base` timed round-robin;
- the op count of one decode step of each checkout's float32 export;
- phase 2 (XLA disabled for the process, as TF Serving): each checkout's
  float32 and bfloat16 exports served through `serving_check.Server`.

Prints one JSON line per row: best and median seconds of `--repeats`
alternating runs, new tokens/s at the best, and `new_over_base` (> 1:
this checkout is faster).

    python benchmarks/before_after.py --base ../base --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import hostinfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def copy_renamed(base_checkout: str, target: str) -> None:
    """`base_checkout/tflm` as the package `tflm_base` under `target`."""
    source = os.path.join(base_checkout, "tflm")
    destination = os.path.join(target, "tflm_base")
    shutil.copytree(source, destination)
    for folder, _, files in os.walk(destination):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    text = f.read()
                text = re.sub(r"\bfrom tflm\b", "from tflm_base", text)
                text = re.sub(r"\bimport tflm\b", "import tflm_base", text)
                text = re.sub(r"(?<![\w/])tflm\.(?=\w)", "tflm_base.", text)
                text = text.replace('package="tflm"', 'package="tflm_base"')
                with open(path, "w") as f:
                    f.write(text)
    sys.path.insert(0, target)


def report(kind, batch, tokens, times):
    best = {k: min(v) for k, v in times.items()}
    for side in ("new", "base"):
        print(
            json.dumps(
                {
                    "row": kind,
                    "code": side,
                    "batch": batch,
                    "best_s": round(best[side], 4),
                    "median_s": round(statistics.median(times[side]), 4),
                    "new_tokens_per_s": round(tokens / best[side], 1),
                }
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "row": kind,
                "batch": batch,
                "new_over_base": round(best["base"] / best["new"], 3),
                "new_over_base_median": round(
                    statistics.median(times["base"])
                    / statistics.median(times["new"]),
                    3,
                ),
            }
        ),
        flush=True,
    )


def generate_runner(model, prompts, new, **kw):
    def run():
        out = model.generate(
            prompts, max_new_tokens=new, return_details=True, **kw
        )
        assert min(out["num_tokens"]) == new, out["num_tokens"]

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other checkout")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new", type=int, default=192)
    parser.add_argument("--beam-new", type=int, default=128)
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--served-only",
        action="store_true",
        help="skip the in-process and beam rows",
    )
    args = parser.parse_args()
    hostinfo.emit()
    import serving

    if not os.path.exists(serving.DATA):
        print(json.dumps({"skipped": f"{serving.DATA} not found"}))
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="tflm-before-after-")
    copy_renamed(args.base, tempfile.mkdtemp(prefix="tflm-base-code-"))
    import keras
    import tflm_base.models
    import tflm_base.tokenizers

    import tflm.models
    import tflm.tokenizers

    tokenizer = serving.train_tokenizer(serving.DATA, workdir)
    base_tokenizer = tflm_base.tokenizers.load_tokenizer(
        os.path.join(workdir, "tokenizer")
    )
    batches = [int(b) for b in args.batches.split(",")]
    prompts = serving.exact_prompts(tokenizer, serving.DATA, max(batches), 64)
    keras.utils.set_random_seed(0)
    new = tflm.models.CausalLM.from_preset(
        "bench-small", vocabulary_size=tokenizer.vocabulary_size
    )
    base = tflm_base.models.CausalLM.from_preset(
        "bench-small", vocabulary_size=tokenizer.vocabulary_size
    )
    base.set_weights(new.get_weights())
    new.tokenizer, base.tokenizer = tokenizer, base_tokenizer
    models = {"new": new, "base": base}
    for batch in [] if args.served_only else batches:
        for jit in (True, False):
            runners = {
                side: generate_runner(
                    m, prompts[:batch], args.new, jit_compile=jit
                )
                for side, m in models.items()
            }
            times = serving.interleaved(runners, args.repeats)
            kind = "in_process_xla" if jit else "in_process_graph"
            report(kind, batch, batch * args.new, times)
    for jit in () if args.served_only else (True, False):
        runners = {
            side: generate_runner(
                m, prompts[:1], args.beam_new, jit_compile=jit, num_beams=4
            )
            for side, m in models.items()
        }
        times = serving.interleaved(runners, args.repeats)
        kind = "beam4_xla" if jit else "beam4_graph"
        report(kind, 1, args.beam_new, times)
    import tflm_base.export

    import tflm.export

    exporters = {"new": tflm.export.export, "base": tflm_base.export.export}
    paths = {}
    for side, export in exporters.items():
        for weights in ("float32", "bfloat16"):
            start = time.perf_counter()
            paths[side, weights] = export(
                models[side],
                os.path.join(workdir, f"{side}-{weights}"),
                weights=weights,
            )
            seconds = time.perf_counter() - start
            ops = serving.decode_step_ops(paths[side, weights])
            print(
                json.dumps(
                    {
                        "row": "export",
                        "code": side,
                        "weights": weights,
                        "export_seconds": round(seconds, 1),
                        "decode_step_ops": sum(ops.values()),
                        "export_MB": round(
                            sum(
                                os.path.getsize(os.path.join(d, f))
                                for d, _, files in os.walk(paths[side, weights])
                                for f in files
                            )
                            / 1e6,
                            1,
                        ),
                    }
                ),
                flush=True,
            )
    check = serving.load_serving_check()
    assert check.disable_xla()["xla_disabled"]
    servers = {}
    for key, path in paths.items():
        servers[key] = check.Server(path)
        warmup = os.path.join(path, check.WARMUP_FILE)
        for signature, arrays in check.warmup_requests(warmup):
            servers[key].run(signature, arrays)
    for weights in ("float32", "bfloat16"):
        for batch in batches:
            runners = {
                side: serving.served_runner(
                    servers[side, weights], prompts[:batch], args.new
                )
                for side in ("new", "base")
            }
            times = serving.interleaved(runners, args.repeats)
            report(f"served_{weights}", batch, batch * args.new, times)


if __name__ == "__main__":
    main()
