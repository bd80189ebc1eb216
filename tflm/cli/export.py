"""`tflm export`: write a versioned SavedModel that TF Serving serves."""

from __future__ import annotations

import argparse
import os

from tflm.cli import common


def add(subparsers) -> None:
    parser = common.add_command(
        subparsers,
        "export",
        help="write a SavedModel that TF Serving serves",
        description="Write BASE/<version>/: a SavedModel with the signatures "
        "serving_default (generate text), generate (every control), "
        "beam_search, chat (a model with a chat template), score, tokenize "
        "and detokenize, the tokenizer, and TF Serving warm-up requests. "
        "Before the version is published, its warm-up requests are "
        "replayed as TF Serving replays them when it loads a version (a "
        "fresh process, XLA off); if one fails, nothing is published. "
        "Written atomically.",
        example="tflm export models/book --out serving/book",
    )
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="the model directory to export"
    )
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
        help="compile the decode loop with XLA (TF Serving then needs "
        "--xla_cpu_compilation_enabled=true, or "
        "--xla_gpu_compilation_enabled=true on a GPU)",
    )
    parser.add_argument(
        "--weights",
        choices=("float32", "bfloat16", "int8"),
        default=None,
        help="store and run the weights in this type (default: as saved); "
        "bfloat16 pays only on a CPU with AVX-512 BF16 or AMX-BF16",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip assets.extra/tf_serving_warmup_requests and its replay",
    )
    parser.add_argument(
        "--format",
        choices=("saved_model", "huggingface"),
        default="saved_model",
        help="saved_model (default): BASE/<version>/ for TF Serving; "
        "huggingface: --out becomes a folder that transformers loads "
        "(config.json, model.safetensors, the tokenizer); GPT-2 models "
        "with a GPT-2 BPE tokenizer so far",
    )
    parser.set_defaults(func=run)


def _to_huggingface(model, args: argparse.Namespace) -> int:
    from tflm import errors
    from tflm.export import huggingface

    if (
        args.version is not None
        or args.xla
        or args.weights
        not in (
            None,
            "float32",
        )
    ):
        raise errors.InputError(
            "--version, --xla and --weights bfloat16/int8 are for the "
            "SavedModel; drop them with --format huggingface."
        )
    path = huggingface.to_huggingface(model, args.out, overwrite=args.overwrite)
    print(f"exported: {path} ({common.size_mb(path):.1f} MB)")
    print(
        "load it: transformers.AutoModelForCausalLM.from_pretrained"
        f"({path!r}) and AutoTokenizer.from_pretrained({path!r})"
    )
    return 0


def serve_commands(
    base: str, name: str = "tflm", xla: bool = False
) -> list[str]:
    """The `docker run` and `curl` commands that serve export base `base`.

    Example:
    >>> print(serve_commands("/tmp/my models/x")[0])  # doctest: +ELLIPSIS
    docker run --rm -p 8501:8501 -v '/tmp/my models/x:/models/tflm' ...
    """
    import json
    import shlex

    body = json.dumps(
        {
            "instances": [
                {
                    "prompt": "Hello",
                    "max_new_tokens": 32,
                    "temperature": 0.8,
                    "top_k": 0,
                    "top_p": 0.95,
                    "seed": 0,
                }
            ]
        }
    )
    volume = shlex.quote(f"{os.path.abspath(base)}:/models/{name}")
    flag = " --xla_cpu_compilation_enabled=true" if xla else ""
    return [
        f"docker run --rm -p 8501:8501 -v {volume} -e MODEL_NAME={name} "
        f"tensorflow/serving:2.21.0{flag}",
        f"curl -s localhost:8501/v1/models/{name}:predict -d "
        + shlex.quote(body),
    ]


def run(args: argparse.Namespace) -> int:
    from tflm import export
    from tflm.export import saved_model
    from tflm.models import causal_lm
    from tflm.models import model_dir

    model = model_dir.load_model(causal_lm.CausalLM, args.model_dir)
    if args.format == "huggingface":
        return _to_huggingface(model, args)
    path = export.export(
        model,
        args.out,
        version=args.version,
        overwrite=args.overwrite,
        jit_compile=args.xla,
        warmup=not args.no_warmup,
        weights=args.weights,
        replay_warmup=not args.no_warmup,
    )
    print(f"exported: {path} ({common.size_mb(path):.1f} MB)")
    print(f"signatures: {', '.join(saved_model.signature_names(path))}")
    if args.xla:
        print(
            "XLA export: the server needs --xla_cpu_compilation_enabled=true "
            "(--xla_gpu_compilation_enabled=true on a GPU); without it TF "
            "Serving refuses this version at warm-up."
        )
    print("serve it:")
    for command in serve_commands(os.path.dirname(path), xla=args.xla):
        print(f"  {command}")
    return 0
