"""`tflm` subcommands that work on a model directory: generate, export,
import and quickstart. `tflm.cli` registers them; each handler is thin."""

from __future__ import annotations

import argparse
import os
import sys


def _sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="default: 64, or the context - 1",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 is greedy (default)"
    )
    parser.add_argument("--top-k", type=int, default=0, help="0 is off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 is off")
    parser.add_argument("--seed", type=int, default=0)


def add_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="continue prompts with a trained model",
        description="Print the continuation of each prompt. Prompts come "
        "from --prompt, or from standard input, one per line.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a prompt; repeat for a batch",
    )
    _sampling_flags(parser)
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TOKEN",
        help="extra one-token stop string",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="print text as it is produced (one prompt)",
    )
    parser.add_argument(
        "--no-xla",
        action="store_true",
        help="run the plain graph (as TF Serving does)",
    )
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from tflm import modeldir

    prompts = args.prompt
    if prompts is None:
        prompts = [line.rstrip("\n") for line in sys.stdin]
    if not prompts:
        raise ValueError("no prompt: pass --prompt TEXT or lines on stdin.")
    model = modeldir.load(args.model_dir)
    settings = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    if args.stream:
        if len(prompts) != 1:
            raise ValueError("--stream takes exactly one prompt.")
        for piece in model.stream(prompts[0], args.max_new_tokens, **settings):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    outputs = model.generate(
        prompts, args.max_new_tokens, jit_compile=not args.no_xla, **settings
    )
    for i, text in enumerate(outputs):
        if len(outputs) > 1:
            print(f"--- {i + 1}: {prompts[i]}")
        print(text)
    return 0


def add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a SavedModel that TF Serving serves",
        description="Write BASE/<version>/: a SavedModel with the signatures "
        "serving_default (generate), score, tokenize and detokenize, the "
        "tokenizer, and TF Serving warm-up requests. Written atomically.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument(
        "--out",
        required=True,
        metavar="BASE",
        help="the model's base path as TF Serving sees it",
    )
    parser.add_argument(
        "--version",
        type=int,
        default=None,
        metavar="N",
        help="default: one more than the latest version",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing version"
    )
    parser.add_argument(
        "--xla",
        action="store_true",
        help="compile the decode loop with XLA (TF Serving "
        "then needs --xla_cpu_compilation_enabled=true)",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip assets.extra/tf_serving_warmup_requests",
    )
    parser.set_defaults(func=run_export)


def _size_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6


def run_export(args: argparse.Namespace) -> int:
    from tflm import export
    from tflm import modeldir

    model = modeldir.load(args.model_dir)
    path = export.export(
        model,
        args.out,
        version=args.version,
        overwrite=args.overwrite,
        jit_compile=args.xla,
        warmup=not args.no_warmup,
    )
    print(f"exported: {path} ({_size_mb(path):.1f} MB)")
    print("signatures: serving_default, score, tokenize, detokenize")
    base = os.path.dirname(path)
    print(
        "serve it: docker run -p 8501:8501 -v "
        f"{base}:/models/tflm -e MODEL_NAME=tflm tensorflow/serving:2.21.0"
    )
    return 0


def add_quickstart(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="raw text to served answers in one command",
        description="Train a small character-level model on your text, "
        "generate from it, export it for TF Serving, and answer prompts "
        "from the export loaded the way TF Serving loads it (XLA off). "
        "Running it again resumes or reuses the trained model.",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text files, folders or quoted globs",
    )
    parser.add_argument(
        "--out",
        default="tflm-quickstart",
        metavar="DIR",
        help="where the model and the export go",
    )
    parser.add_argument("--preset", default="nano-char")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="prompts to answer (default: two from --data)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.set_defaults(func=run_quickstart)


def _default_prompts(paths) -> list[str]:
    from tflm.data import corpus

    for text in corpus.sample_texts(corpus.find_files(paths), 4096):
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            return ["", lines[0][:16]]
    return [""]


def _serve(saved_model: str, prompts: list[str], max_new: int) -> list[str]:
    """Answers through `serving_check.py`: a fresh process with XLA off."""
    import json
    import subprocess
    import tempfile

    from tflm.export import serving_check

    body = {
        "signature_name": "serving_default",
        "instances": [
            {
                "prompt": p,
                "max_new_tokens": max_new,
                "temperature": 0.8,
                "top_k": 0,
                "top_p": 0.95,
                "seed": i,
            }
            for i, p in enumerate(prompts)
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump([body], f)
        f.flush()
        done = subprocess.run(
            [
                sys.executable,
                serving_check.__file__,
                saved_model,
                "--requests",
                f.name,
                "--warmup",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    if done.returncode:
        raise RuntimeError(f"serving check failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout)["results"][0]
    if "error" in result:
        raise RuntimeError(f"serving check failed: {result['error']}")
    return [
        t if isinstance(t, str) else repr(t) for t in result["outputs"]["text"]
    ]


def run_quickstart(args: argparse.Namespace) -> int:
    from tflm import export
    from tflm import modeldir
    from tflm.train import config as train_config
    from tflm.train import fit

    model_dir = os.path.join(args.out, "model")
    print(
        f"[1/4] training {args.preset} on {' '.join(args.data)} "
        f"for {args.steps} steps -> {model_dir}"
    )
    fit.train(
        train_config.TrainConfig(
            data=tuple(args.data),
            out=model_dir,
            preset=args.preset,
            tokenizer="byte",
            steps=args.steps,
            batch_size=12,
            learning_rate=1e-3,
            min_learning_rate=1e-4,
            warmup_steps=min(100, args.steps // 10),
            beta_2=0.99,
            text_format="paragraph",
            checkpoint_every=200,
            validate_every=0,
            eval_batches=20,
        )
    )
    prompts = args.prompt or _default_prompts(args.data)
    model = modeldir.load(model_dir)
    print("[2/4] generating in-process (greedy):")
    for prompt, text in zip(
        prompts, model.generate(prompts, args.max_new_tokens), strict=True
    ):
        print(f"  {prompt!r} -> {prompt + text!r}")
    base = os.path.join(args.out, "serving")
    path = export.export(model, base, overwrite=True, version=1)
    print(f"[3/4] exported a SavedModel for TF Serving: {path}")
    print("[4/4] served answers (loaded like TF Serving, XLA off, sampled):")
    for prompt, text in zip(
        prompts, _serve(path, prompts, args.max_new_tokens), strict=True
    ):
        print(f"  {prompt!r} -> {prompt + text!r}")
    print(f"\nnext: tflm generate {model_dir} --prompt 'your text' --stream")
    print(
        f"      docker run -p 8501:8501 -v {os.path.abspath(base)}:"
        "/models/tflm -e MODEL_NAME=tflm tensorflow/serving:2.21.0"
    )
    return 0


def add_import(subparsers) -> None:
    parser = subparsers.add_parser(
        "import",
        help="turn a GPT-2 checkpoint into a tflm model directory",
        description="Import a Hugging Face GPT-2 directory (config.json, "
        "model.safetensors, vocab.json, merges.txt) or a keras-hub GPT-2 "
        "preset directory. Nothing is downloaded.",
    )
    parser.add_argument("path", metavar="PATH")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a model already in --out (its weights, tokenizer and "
        "training state)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="dropout for fine-tuning (default: the checkpoint's)",
    )
    parser.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    import time

    from tflm import importers

    overrides = {} if args.dropout is None else {"dropout": args.dropout}
    start = time.perf_counter()
    out = importers.import_checkpoint(
        args.path, args.out, overwrite=args.overwrite, **overrides
    )
    print(
        f"imported {args.path} -> {out} ({time.perf_counter() - start:.1f} s)"
    )
    return 0
