"""`tflm export`: write a versioned SavedModel that TF Serving serves."""

from __future__ import annotations

import argparse
import json
import os

from tflm.cli import common


def add(subparsers) -> None:
    parser = common.add_command(
        subparsers,
        "export",
        help="write a SavedModel that TF Serving serves, or the model for "
        "transformers, PEFT or llama.cpp",
        description="Write BASE/<version>/: a SavedModel with the signatures "
        "serving_default (generate text), generate (every control), "
        "beam_search, chat (a model with a chat template), score, tokenize "
        "and detokenize, the tokenizer, and TF Serving warm-up requests. "
        "Before the version is published, its warm-up requests are "
        "replayed as TF Serving replays them when it loads a version (a "
        "fresh process, XLA off); if one fails, nothing is published. "
        "With --format huggingface, write the Hugging Face layout instead "
        "(config, safetensors, tokenizer, chat template; --adapters-only: a "
        "LoRA fine-tune's adapters for PEFT); with --format gguf, one GGUF "
        "file for llama.cpp. Written atomically.",
        example="tflm export models/book --out serving/book\n"
        "tflm export models/book --format huggingface --out hf/book",
    )
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="the model directory to export"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="BASE",
        help="the model's base path as TF Serving sees it; with --format "
        "huggingface the folder to write, with --format gguf the file",
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
        choices=("float32", "bfloat16", "float16", "int8"),
        default=None,
        help="store the weights in this type: for a SavedModel float32, "
        "bfloat16 or int8 (default: as saved; bfloat16 pays only on a CPU "
        "with AVX-512 BF16 or AMX-BF16); huggingface float32 (default) or "
        "bfloat16; gguf float32 (default) or float16",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip assets.extra/tf_serving_warmup_requests and its replay",
    )
    parser.add_argument(
        "--format",
        choices=("saved_model", "huggingface", "gguf"),
        default="saved_model",
        help="saved_model (default): BASE/<version>/ for TF Serving; "
        "huggingface: --out becomes a folder that transformers, vLLM and "
        "llama.cpp's converter load (config.json, safetensors, tokenizer, "
        "chat template); gguf: --out becomes one .gguf file for llama.cpp",
    )
    parser.add_argument(
        "--adapters-only",
        action="store_true",
        help="with --format huggingface: write a LoRA fine-tune's adapters "
        "as PEFT's adapter_model.safetensors + adapter_config.json, for the "
        "base model exported on its own",
    )
    parser.add_argument(
        "--model-type",
        choices=("gpt2", "llama", "qwen2", "mistral"),
        default=None,
        help="with --format huggingface: the model_type to write (default: "
        "the family the model was imported from, else by the "
        "architecture; mistral may be asked for a bias-free Llama)",
    )
    parser.set_defaults(func=run)


# The --weights each format writes (the first is the default).
_FORMAT_WEIGHTS = {
    "saved_model": (None, "float32", "bfloat16", "int8"),
    "huggingface": ("float32", "bfloat16"),
    "gguf": ("float32", "float16"),
}


def _check_flags(args: argparse.Namespace) -> None:
    from tflm import errors

    allowed = _FORMAT_WEIGHTS[args.format]
    if args.weights is not None and args.weights not in allowed:
        raise errors.InputError(
            f"--weights {args.weights} does not apply to --format "
            f"{args.format}; it writes {' or '.join(filter(None, allowed))}."
        )
    if args.format == "saved_model":
        given = [
            flag
            for flag, value in (
                ("--adapters-only", args.adapters_only),
                ("--model-type", args.model_type),
            )
            if value
        ]
    else:
        given = [
            flag
            for flag, value in (
                ("--version", args.version is not None),
                ("--xla", args.xla),
                ("--no-warmup", args.no_warmup),
            )
            if value
        ]
        if args.format == "gguf" and args.adapters_only:
            given.append("--adapters-only")
        if args.adapters_only and args.model_type:
            given.append("--model-type")
        if args.adapters_only and args.weights not in (None, "float32"):
            given.append(f"--weights {args.weights}")
    if given:
        raise errors.InputError(
            f"{', '.join(given)} does not apply to --format {args.format}; "
            "drop it."
        )


def _to_huggingface(model, args: argparse.Namespace) -> int:
    from tflm.export import huggingface

    if args.adapters_only:
        from tflm.export import peft

        path = peft.to_peft(
            model,
            args.out,
            overwrite=args.overwrite,
            model_type=args.model_type,
        )
        print(f"exported adapters: {path} ({common.size_mb(path):.1f} MB)")
        print(
            "load them: peft.PeftModel.from_pretrained(<the base model in "
            f"transformers>, {path!r})"
        )
        return 0
    path = huggingface.to_huggingface(
        model,
        args.out,
        overwrite=args.overwrite,
        weights=args.weights or "float32",
        model_type=args.model_type,
    )
    with open(os.path.join(path, huggingface.CONFIG_FILE)) as f:
        config = json.load(f)
    print(
        f"exported: {path} ({config['model_type']}, {config['torch_dtype']}, "
        f"{common.size_mb(path):.1f} MB)"
    )
    print(
        "load it: transformers.AutoModelForCausalLM.from_pretrained"
        f"({path!r}) and AutoTokenizer.from_pretrained({path!r})"
    )
    return 0


def _to_gguf(model, args: argparse.Namespace) -> int:
    from tflm.export import gguf

    path = gguf.to_gguf(
        model,
        args.out,
        overwrite=args.overwrite,
        dtype=args.weights or "float32",
    )
    print(f"exported: {path} ({os.path.getsize(path) / 2**20:.1f} MB)")
    print(f"run it: llama-cli -m {path}")
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

    _check_flags(args)
    if args.format != "saved_model":
        # Weights stored in bfloat16 or int8 are read back as float32 (int8
        # dequantized); the file is then written in the asked dtype.
        model = model_dir.load_model(
            causal_lm.CausalLM, args.model_dir, weights="float32"
        )
        if args.format == "gguf":
            return _to_gguf(model, args)
        return _to_huggingface(model, args)
    model = model_dir.load_model(causal_lm.CausalLM, args.model_dir)
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
