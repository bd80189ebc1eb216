"""Serving speed: the exported `serving_default` under TF Serving's
conditions vs in-process generation.

`--preset bench-small` (random weights) with a vocab-8192 SentencePiece
tokenizer trained on Tiny Shakespeare; `--preset gpt2-124m`: a random
GPT-2 124M checkpoint in the Hugging Face layout with its 50,257-token BPE
(written as `benchmarks/import_checkpoints.py` does); or `--preset
llama-135m`: a random Llama checkpoint of that shape (SmolLM2-135M's) with
a 49,152-token byte-level BPE `tokenizer.json`, written by
`families.write_llama_checkpoint`. Both checkpoints are brought in by
tflm's importer. Prompts of exactly `--prompt` (64) tokens; greedy, 192
new tokens; batch 1 and 8; the end-of-text logits are pinned below the
others so that every run makes all its tokens. The export runs through
`serving_check.Server` (TF1 session, `saved_model.loader.load`, XLA
disabled for the process, warm-up replayed): what stock TF Serving does,
minus the network; one export per `--weights` type (float32 and bfloat16
by default). It is timed in alternation with in-process
`CausalLM.generate(jit_compile=False)`, so that load from other processes
hits both alike. XLA rows (tflm, and keras-hub's `GPT2CausalLM` or
`LlamaCausalLM` `.generate` of the preset's shape, from
`families.keras_hub_model`) run first, alternating with the same
in-process graph run, before XLA is disabled. HF transformers'
`GPT2LMHeadModel` or `LlamaForCausalLM` `.generate` (eager PyTorch,
greedy, the same shape, random weights; `families.hf_model`) runs in
phase 2, alternating with the served exports (XLA has no part in it).
With `--xla-export`, a float32 `tflm export --xla` is served in phase 1
too (XLA left on, as TF Serving with `--xla_cpu_compilation_enabled=true`),
and phase 2 reports the error the same export gives where XLA is disabled.
Prints export time and size, the op count of one decode step of the
exported loop, the read bandwidth (median of several passes over
512 MB) and the weight-read limit (steps/s at which every weight is read
once per step; for an export, of the variables it stores), one JSON line
per measurement (best of `--repeats`, with its fraction of that limit),
then speed ratios (served / other; > 1 means
served is faster).

    python benchmarks/serving.py --batches 1,8 --repeats 3
    python benchmarks/serving.py --preset llama-135m --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time

import hostinfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# PyTorch's OpenMP threads otherwise spin after each HF run and take the
# cores from the TensorFlow run that follows it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVING_CHECK = os.path.join(ROOT, "tflm", "export", "serving_check.py")
DATA = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")


def train_tokenizer(data: str, workdir: str):
    from tflm.tokenizers import SentencePieceTokenizer
    from tflm.tokenizers import load_tokenizer

    path = os.path.join(workdir, "tokenizer")
    if os.path.isdir(path):
        return load_tokenizer(path)
    tokenizer = SentencePieceTokenizer.train([data], vocabulary_size=8192)
    tokenizer.save(path)
    return tokenizer


def exact_prompts(tokenizer, data: str, count: int, length: int) -> list:
    """`count` passages of the corpus that tokenize to exactly `length`."""
    with open(data) as f:
        text = f.read()
    prompts, start = [], 0
    while len(prompts) < count:
        ids = tokenizer.tokenize(text[start : start + 40 * length])
        piece = tokenizer.detokenize(ids[:length]).numpy().decode()
        if len(tokenizer.tokenize(piece)) == length:
            prompts.append(piece)
        start += 4000
    return prompts


def imported(preset: str, workdir: str):
    """`(CausalLM, tokenizer)`: a random checkpoint of `preset`'s shape in
    the Hugging Face layout (GPT-2 for `gpt2-124m`, Llama otherwise),
    written once under `workdir` and loaded by tflm's importer."""
    import families
    import import_checkpoints

    from tflm import importers

    source = os.path.join(workdir, f"hf-{preset}")
    # Both writers write config.json last: with it, the files are complete.
    if not os.path.isfile(os.path.join(source, "config.json")):
        os.makedirs(source, exist_ok=True)
        if preset == "gpt2-124m":
            import_checkpoints.write_tokenizer(source)
            import_checkpoints.write_checkpoint(source)
        else:
            families.write_llama_checkpoint(source, preset)
    return importers.load_checkpoint(source)


def build_model(tokenizer, preset: str = "bench-small", model=None):
    """`preset` with random weights (or `model`); the logits of the ids
    that end a reply (the tokenizer's end id and an imported checkpoint's
    `eos_ids`) are pinned to 0 so that greedy decoding never stops early
    (other logits exceed them)."""
    from tflm.models import CausalLM

    model = model or CausalLM.from_preset(preset)
    assert model.backbone.vocabulary_size == tokenizer.vocabulary_size
    embedding = model.backbone.token_embedding
    ends = [tokenizer.eos_id, *getattr(model, "eos_ids", ())]
    table = embedding.embeddings.numpy()
    table[ends] = 0.0
    embedding.embeddings.assign(table)
    if getattr(embedding, "reverse_embeddings", None) is not None:
        reverse = embedding.reverse_embeddings.numpy()
        reverse[:, ends] = 0.0
        embedding.reverse_embeddings.assign(reverse)
    model.tokenizer = tokenizer
    return model


def export_model(
    model, workdir: str, weights: str = "float32", xla: bool = False
) -> tuple:
    from tflm import export

    start = time.perf_counter()
    name = f"export-{weights}" + ("-xla" if xla else "")
    path = export.export(
        model, os.path.join(workdir, name), weights=weights, jit_compile=xla
    )
    seconds = time.perf_counter() - start
    size = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(path)
        for f in files
    )
    return path, seconds, size / 1e6


def _variables_bytes(path: str) -> int:
    folder = os.path.join(path, "variables")
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for f in os.listdir(folder)
        if f.startswith("variables.data")
    )


# Ops that cost (next to) nothing per step: not counted.
_FREE_OPS = {"Const", "Identity", "NoOp", "StopGradient", "_Arg", "_Retval"}


def _callees(node):
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        yield from (f.name for f in value.list.func)


def decode_step_ops(path: str, signature: str = "serving_default") -> dict:
    """`{op type: count}` of one step of `signature`'s decode loop, as the
    SavedModel stores it (before the session's grappler passes): the body
    of the `While` with the most matmuls, functions it calls included."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    meta = saved.meta_graphs[0]
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    nodes = {n.name: n for n in meta.graph_def.node}
    outputs = meta.signature_def[signature].outputs.values()
    todo = [c for t in outputs for c in _callees(nodes[t.name.split(":")[0]])]
    seen, bodies = set(todo), []
    while todo:
        for node in library[todo.pop()].node_def:
            if node.op in ("While", "StatelessWhile"):
                bodies.append(node.attr["body"].func.name)
            for name in _callees(node):
                if name in library and name not in seen:
                    seen.add(name)
                    todo.append(name)

    def count(name, seen):
        counts = {}
        for node in library[name].node_def:
            if node.op not in _FREE_OPS:
                counts[node.op] = counts.get(node.op, 0) + 1
            for callee in _callees(node):
                if callee in library and callee not in seen:
                    seen.add(callee)
                    for op, n in count(callee, seen).items():
                        counts[op] = counts.get(op, 0) + n
        return counts

    steps = [count(body, {body}) for body in bodies]
    return max(
        steps, key=lambda c: c.get("MatMul", 0) + c.get("BatchMatMulV2", 0)
    )


def load_serving_check():
    """`tflm/export/serving_check.py` as a module (it is a script)."""
    spec = importlib.util.spec_from_file_location(
        "serving_check", SERVING_CHECK
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _feeds(prompts, new) -> dict:
    n = len(prompts)
    return {
        "prompt": np.array([p.encode() for p in prompts], object),
        "max_new_tokens": np.full([n], new, np.int32),
        "temperature": np.zeros([n], np.float32),
        "top_k": np.zeros([n], np.int32),
        "top_p": np.ones([n], np.float32),
        "seed": np.zeros([n], np.int32),
    }


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runners: dict, repeats: int) -> dict:
    """Seconds of each runner's `repeats` runs, round-robin after one
    warm-up each, so that load from other processes hits them alike."""
    for run in runners.values():
        run()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(_timed(run))
    return times


def best_interleaved(runners: dict, repeats: int) -> dict:
    """Best seconds of each runner (see `interleaved`)."""
    return {name: min(t) for name, t in interleaved(runners, repeats).items()}


def tflm_runner(model, prompts, new, jit: bool):
    def run():
        out = model.generate(
            prompts, max_new_tokens=new, jit_compile=jit, return_details=True
        )
        assert out["num_tokens"] == [new] * len(prompts), out["num_tokens"]

    return run


def served_runner(server, prompts, new):
    feeds = _feeds(prompts, new)

    def run():
        out = server.run("serving_default", feeds)["outputs"]
        assert out["num_tokens"].tolist() == [new] * len(prompts)

    return run


def keras_hub_model(preset: str):
    """keras-hub's causal LM of `preset`'s shape (`GPT2CausalLM` or
    `LlamaCausalLM`), greedy, with XLA.

    `jit_compile=True` is keras-hub's fastest setting here: its default
    `"auto"` turns XLA off on a machine without a GPU.
    """
    import families

    model = families.keras_hub_model(preset)
    model.compile(sampler="greedy", jit_compile=True)
    return model


def keras_hub_runner(model, batch, prompt_len, new):
    ids = np.random.default_rng(0).integers(
        3, model.backbone.vocabulary_size, size=(batch, prompt_len)
    )
    pad = np.zeros((batch, new), "int32")
    inputs = {
        "token_ids": np.concatenate([ids.astype("int32"), pad], 1),
        "padding_mask": np.concatenate([np.ones_like(ids, "int32"), pad], 1),
    }
    return lambda: model.generate(
        inputs, max_length=prompt_len + new, stop_token_ids=None
    )


def hf_runner(model, batch, prompt_len, new):
    import torch
    from generate import _prompts

    ids = torch.tensor(_prompts(batch, prompt_len, model.config.vocab_size))

    def run():
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
        assert out.shape[1] == prompt_len + new, out.shape

    return run


def _line(**fields):
    print(json.dumps(fields), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        default="bench-small",
        choices=["bench-small", "gpt2-124m", "llama-135m"],
    )
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--no-keras-hub", action="store_true")
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument(
        "--weights",
        default="float32,bfloat16",
        help="exports to serve, by weight type (float32 first)",
    )
    parser.add_argument(
        "--xla-export",
        action="store_true",
        help="also serve `tflm export --xla` (float32) where XLA is on, "
        "as TF Serving with --xla_cpu_compilation_enabled=true would",
    )
    args = parser.parse_args()
    hostinfo.emit()
    if not os.path.exists(args.data):
        _line(skipped=f"{args.data} not found (../shared/data)")
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="tflm-serving-bench-")
    batches = [int(b) for b in args.batches.split(",")]
    if args.preset == "bench-small":
        loaded, tokenizer = None, train_tokenizer(args.data, workdir)
    else:
        loaded, tokenizer = imported(args.preset, workdir)
    prompts = exact_prompts(tokenizer, args.data, max(batches), args.prompt)
    model = build_model(tokenizer, args.preset, loaded)
    _line(preset=args.preset, parameters=model.count_params())
    kinds = args.weights.split(",")
    paths = {}
    for weights in kinds:
        paths[weights], export_seconds, megabytes = export_model(
            model, workdir, weights
        )
        _line(
            weights=weights,
            export_seconds=round(export_seconds, 2),
            export_MB=round(megabytes, 1),
        )
    xla_path = None
    if args.xla_export:
        xla_path, export_seconds, megabytes = export_model(
            model, workdir, "float32", xla=True
        )
        _line(
            weights="float32",
            xla=True,
            export_seconds=round(export_seconds, 2),
            export_MB=round(megabytes, 1),
        )
    path = paths[kinds[0]]
    step_ops = decode_step_ops(path)
    _line(
        decode_step_ops=sum(step_ops.values()),
        top_ops=dict(sorted(step_ops.items(), key=lambda kv: -kv[1])[:12]),
    )
    from families import hf_model
    from generate import read_bandwidth_gbps

    bandwidth = read_bandwidth_gbps()
    weight_bytes = sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in model.weights
    )
    # Each decode step reads every weight once: at most this many steps/s.
    step_limit = bandwidth * 1e9 / weight_bytes
    # A served export reads the variables it stores (bf16 ones are smaller).
    limits = {}
    for weights, export_path in paths.items():
        name = "served" if weights == kinds[0] else f"served_{weights}"
        stored = _variables_bytes(export_path)
        limits[name] = bandwidth * 1e9 / stored
        _line(
            weights=weights,
            stored_variables_MB=round(stored / 1e6, 1),
            weight_read_limit_steps_per_s=round(limits[name], 1),
        )
    _line(
        read_bandwidth_GBps=round(bandwidth, 1),
        weight_MB=round(weight_bytes / 1e6, 1),
        weight_read_limit_steps_per_s=round(step_limit, 1),
    )
    hub = None if args.no_keras_hub else keras_hub_model(args.preset)
    # Phase 1, XLA allowed: in-process runs. Phase 2, TF Serving's
    # conditions (XLA disabled for the whole process): the served signature.
    # `tflm_graph` runs in both phases, so each ratio compares runs that
    # alternated with each other (served vs XLA goes through tflm_graph).
    best = {}
    serving_check = load_serving_check()
    xla_server = None
    if xla_path is not None:  # loaded as TF Serving loads, XLA left on
        xla_server = serving_check.Server(xla_path)
        warmup = os.path.join(xla_path, serving_check.WARMUP_FILE)
        for signature, arrays in serving_check.warmup_requests(warmup):
            xla_server.run(signature, arrays)
        limits["served_xla"] = limits["served"]
    for batch in batches:
        runners = {
            "tflm_xla": tflm_runner(model, prompts[:batch], args.new, True),
            "tflm_graph": tflm_runner(model, prompts[:batch], args.new, False),
        }
        if xla_server is not None:
            runners["served_xla"] = served_runner(
                xla_server, prompts[:batch], args.new
            )
        if hub is not None:
            runners["keras_hub_xla"] = keras_hub_runner(
                hub, batch, args.prompt, args.new
            )
        for name, seconds in best_interleaved(runners, args.repeats).items():
            best[1, name, batch] = seconds
    xla = serving_check.disable_xla()
    assert xla["xla_disabled"], xla
    if xla_path is not None:  # the default server refuses the XLA export
        refused = serving_check.Server(xla_path)
        try:
            refused.run("serving_default", _feeds(prompts[:1], 4))
            _line(xla_export_without_xla="answered")
        except Exception as e:  # noqa: BLE001
            _line(
                xla_export_without_xla=type(e).__name__,
                message=str(e).splitlines()[0][:200],
            )
    hf = None if args.no_hf else hf_model(args.preset)
    servers = {}
    for weights, export_path in paths.items():
        servers[weights] = serving_check.Server(export_path)
        warmup = os.path.join(export_path, serving_check.WARMUP_FILE)
        for signature, arrays in serving_check.warmup_requests(warmup):
            servers[weights].run(signature, arrays)
    for batch in batches:
        runners = {
            "tflm_graph": tflm_runner(model, prompts[:batch], args.new, False)
        }
        for weights, server in servers.items():
            name = "served" if weights == kinds[0] else f"served_{weights}"
            runners[name] = served_runner(server, prompts[:batch], args.new)
        if hf is not None:
            runners["hf"] = hf_runner(hf, batch, args.prompt, args.new)
        for name, seconds in best_interleaved(runners, args.repeats).items():
            best[2, name, batch] = seconds
    for (phase, name, batch), seconds in sorted(best.items()):
        speed = batch * args.new / seconds
        _line(
            phase=phase,
            impl=name,
            batch=batch,
            new_tokens_per_s=round(speed, 1),
            fraction_of_weight_read_limit=round(
                speed / batch / limits.get(name, step_limit), 3
            ),
        )
    for batch in batches:
        served = best[2, "served", batch]
        ratios = {
            "served_over_tflm_graph": best[2, "tflm_graph", batch] / served
        }
        if (1, "served_xla", batch) in best:
            ratios["served_xla_over_tflm_xla"] = (
                best[1, "tflm_xla", batch] / best[1, "served_xla", batch]
            )
        for name in ("tflm_xla", "keras_hub_xla"):
            if (1, name, batch) in best:
                via_graph = best[1, name, batch] / best[1, "tflm_graph", batch]
                ratios[f"served_over_{name}"] = (
                    ratios["served_over_tflm_graph"] * via_graph
                )
        for weights in kinds[1:]:
            other = best[2, f"served_{weights}", batch]
            ratios[f"served_{weights}_over_served"] = served / other
        if (2, "hf", batch) in best:
            ratios["served_over_hf"] = best[2, "hf", batch] / served
        _line(batch=batch, **{k: round(v, 3) for k, v in ratios.items()})


if __name__ == "__main__":
    main()
