"""Checkpoint import: time and peak memory, by family.

For each of `--families` (default `gpt2,llama,qwen2,mistral`) writes a
random checkpoint in the Hugging Face layout with numpy + `safetensors`,
imports it with `tflm.importers.import_checkpoint` in a fresh process,
and prints one JSON line: seconds, seconds per GB of weights, peak RSS
(whole process, and above the RSS before the import began, which
TensorFlow and tflm alone account for), the weights' size (the safetensors
files' bytes), peak RSS over it, and the imported tokenizer's speed on the
corpora. MB and GB are 2**20 and 2**30 bytes.

- `gpt2`: GPT-2 124M as transformers stores it (float32, one file, with
  the causal-mask buffers), a 50,257-token vocabulary whose 50,000 merges
  are learned from the shared corpora with the `tokenizers` library when
  it is installed, topped up with synthetic ones. `--dtype` and
  `--shard-mb` do not apply to it.
- `llama`, `qwen2`, `mistral`: `llama-135m`'s shape (SmolLM2-135M) written
  by `families.write_llama_checkpoint` in `--dtype` (float32 or bfloat16),
  in shards of at most `--shard-mb` MB with an index when given; a 49,152
  token byte-level BPE `tokenizer.json` (`bpe_files`).

    python benchmarks/import_checkpoints.py [--families gpt2,llama]
        [--dtype bfloat16] [--shard-mb 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import bpe_files
import families
import hostinfo
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
CORPORA = [
    os.path.join(ROOT, os.pardir, "shared", "data", name)
    for name in ("tinyshakespeare.txt", "hongloumeng.txt")
]
CONFIG = dict(
    model_type="gpt2",
    vocab_size=50257,
    n_positions=1024,
    n_ctx=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    n_inner=None,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    resid_pdrop=0.1,
)
NUM_MERGES = 50000
FAMILIES = ("gpt2", *families.LLAMA_FAMILIES)
LLAMA_PRESET = "llama-135m"


def byte_chars() -> list[str]:
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = [], 0
    for b in range(256):
        chars.append(chr(b) if b in keep else chr(256 + extra))
        extra += b not in keep
    return chars


def learned_merges(paths: list[str]) -> list[tuple[str, str]]:
    try:
        import tokenizers
    except ImportError:
        return []
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        return []
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train(paths, vocab_size=NUM_MERGES + 256, show_progress=False)
    with tempfile.TemporaryDirectory() as directory:
        bpe.save_model(directory)
        with open(os.path.join(directory, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    return [tuple(m.split(" ")) for m in lines if m and not m.startswith("#")]


def write_tokenizer(directory: str) -> int:
    """Writes `vocab.json`, `merges.txt`; returns the learned merge count."""
    tokens = byte_chars()
    merges = learned_merges(CORPORA)[:NUM_MERGES]
    learned = len(merges)
    tokens += [a + b for a, b in merges]
    bpe_files.synthetic_merges(tokens, merges, NUM_MERGES)
    vocab = {t: i for i, t in enumerate(tokens + ["<|endoftext|>"])}
    assert len(vocab) == CONFIG["vocab_size"], len(vocab)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return learned


def write_checkpoint(directory: str) -> int:
    """Writes a random GPT-2 124M; returns the parameters' bytes."""
    from safetensors import numpy as safetensors_numpy

    rng = np.random.default_rng(0)
    d, ctx, v = CONFIG["n_embd"], CONFIG["n_positions"], CONFIG["vocab_size"]

    def normal(*shape):
        return (rng.standard_normal(shape, np.float32) * 0.02).astype("f4")

    tensors = {"wte.weight": normal(v, d), "wpe.weight": normal(ctx, d)}
    for i in range(CONFIG["n_layer"]):
        for name, shape in (
            ("ln_1", (d,)),
            ("ln_2", (d,)),
            ("attn.c_attn", (d, 3 * d)),
            ("attn.c_proj", (d, d)),
            ("mlp.c_fc", (d, 4 * d)),
            ("mlp.c_proj", (4 * d, d)),
        ):
            tensors[f"h.{i}.{name}.weight"] = normal(*shape) + (len(shape) == 1)
            tensors[f"h.{i}.{name}.bias"] = normal(shape[-1])
        # The causal-mask buffer that Hugging Face's gpt2 file carries.
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, ctx, ctx), "f4"))
    tensors["ln_f.weight"] = normal(d) + 1
    tensors["ln_f.bias"] = normal(d)
    parameters = sum(
        t.nbytes for n, t in tensors.items() if not n.endswith("attn.bias")
    )
    safetensors_numpy.save_file(
        tensors, os.path.join(directory, "model.safetensors")
    )
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    return parameters


# Runs in a fresh process, so that peak RSS is the import's alone. The
# peak is the process's VmHWM: Linux carries the parent's peak into a
# child's `ru_maxrss` across exec (the writer's gigabyte would count).
CHILD = """
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from tflm import importers
source, out = sys.argv[1:3]
def rss():
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f
                        if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = rss()
start = time.perf_counter()
importers.import_checkpoint(source, out)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": rss(), "rss_before_mb": before}))
"""

TOKENIZER_CHILD = """
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from tflm import tokenizers
tok = tokenizers.load_tokenizer(os.path.join(sys.argv[1], "tokenizer"))
result = {}
for path in sys.argv[2:]:
    with open(path, encoding="utf-8") as f:
        lines = [l for l in f.read(300_000).splitlines(keepends=True)]
    batch = ["".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    fn = tf.function(tok.tokenize,
                     input_signature=[tf.TensorSpec([None], tf.string)])
    fn(tf.constant(batch[:4]))
    start = time.perf_counter()
    ids = fn(tf.constant(batch))
    seconds = time.perf_counter() - start
    chars = sum(map(len, batch))
    result[os.path.basename(path)] = {
        "chars_per_s": round(chars / seconds),
        "tokens_per_s": round(int(tf.size(ids.flat_values)) / seconds),
        "chars_per_token": round(chars / int(tf.size(ids.flat_values)), 2)}
print(json.dumps(result))
"""


def run(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode:
        sys.exit(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write(family: str, source: str, dtype: str, shard_mb) -> dict:
    """Writes `family`'s random checkpoint in `source`; returns the JSON
    fields that describe it."""
    os.makedirs(source, exist_ok=True)
    if family == "gpt2":
        learned = write_tokenizer(source)
        write_checkpoint(source)
        return dict(
            preset="gpt2-124m",
            dtype="float32",
            shards=1,
            learned_merges=learned,
        )
    shard_bytes = int(shard_mb * 2**20) if shard_mb else None
    written = families.write_llama_checkpoint(
        source, LLAMA_PRESET, family, dtype, shard_bytes
    )
    return dict(
        preset=LLAMA_PRESET,
        dtype=dtype,
        shards=written.shards,
        learned_merges=written.learned_merges,
    )


def weights_bytes(source: str) -> int:
    return sum(
        os.path.getsize(os.path.join(source, name))
        for name in os.listdir(source)
        if name.endswith(".safetensors")
    )


def measure(family: str, directory: str, args) -> dict:
    source = os.path.join(directory, family, "hf")
    fields = write(family, source, args.dtype, args.shard_mb)
    out = os.path.join(directory, family, "model")
    result = run(CHILD, source, out)
    corpora = CORPORA if family == "gpt2" else bpe_files.CORPORA
    speed = run(TOKENIZER_CHILD, out, *filter(os.path.isfile, corpora))
    mb = weights_bytes(source) / 2**20
    seconds, peak = result["seconds"], result["peak_rss_mb"]
    above = peak - result["rss_before_mb"]
    return dict(
        benchmark="import_checkpoints",
        family=family,
        **fields,
        seconds=round(seconds, 2),
        seconds_per_gb=round(seconds / (mb / 1024), 2),
        peak_rss_mb=round(peak),
        rss_before_import_mb=round(result["rss_before_mb"]),
        import_peak_rss_mb=round(above),
        weights_mb=round(mb),
        peak_over_weights=round(peak / mb, 2),
        import_peak_over_weights=round(above / mb, 2),
        tokenizer=speed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(families.DTYPES)
    )
    parser.add_argument(
        "--shard-mb",
        type=float,
        default=None,
        help="Llama family: shards of at most this many MB, with an index",
    )
    parser.add_argument("--keep", help="write the files here and keep them")
    args = parser.parse_args()
    hostinfo.emit()
    names = args.families.split(",")
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {FAMILIES}")
    with tempfile.TemporaryDirectory() as temp:
        directory = args.keep or temp
        for family in names:
            print(json.dumps(measure(family, directory, args)), flush=True)


if __name__ == "__main__":
    main()
