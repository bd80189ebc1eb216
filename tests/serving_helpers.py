"""Shared pieces of the export tests: tiny models exported once per session.

pytest imports this module once, so the cached builders below export each
model once however many test modules use it (the export tests and the
imported families' serving tests).
"""

import atexit
import base64
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np

from tflm import export as export_lib
from tflm.models import model_dir
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import ByteTokenizer
from tflm.tokenizers import SentencePieceTokenizer
from tflm.tokenizers import templates

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SERVING_CHECK = os.path.join(ROOT, "tflm", "export", "serving_check.py")
# The start of a child process that serves an export as TF Serving does and
# measures each request's memory: `python -c MEASURING_CHILD + body
# SERVING_CHECK PATH ...`. It loads `serving_check.py` as `check`, and
# defines `peak_growth(run)` (`run()`'s value, and how far the peak resident
# size rose above the resident size while it ran) and `serve(path)` (XLA
# disabled, loaded, warm-up replayed).
MEASURING_CHILD = """
import importlib.util
import json
import os
import sys
import time

import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

spec = importlib.util.spec_from_file_location("check", sys.argv[1])
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def status(key):
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def peak_growth(run):
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    value = run()
    return value, status("VmHWM") - before


def serve(path):
    assert check.disable_xla()["xla_disabled"]
    server = check.Server(path)
    warmup = os.path.join(path, check.WARMUP_FILE)
    for signature, arrays in check.warmup_requests(warmup):
        server.run(signature, arrays)
    return server
"""
KIT = os.path.join(ROOT, "export")
CONTEXT = 64
SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")

# The serving contract (ARCHITECTURE.md), as `saved_model_cli show --all`
# prints it: input/output name -> (dtype, shape).
CONTRACT = {
    "serving_default": (
        {
            "prompt": ("DT_STRING", [-1]),
            "max_new_tokens": ("DT_INT32", [-1]),
            "temperature": ("DT_FLOAT", [-1]),
            "top_k": ("DT_INT32", [-1]),
            "top_p": ("DT_FLOAT", [-1]),
            "seed": ("DT_INT32", [-1]),
        },
        {
            "text": ("DT_STRING", [-1]),
            "token_ids": ("DT_INT32", [-1, -1]),
            "num_tokens": ("DT_INT32", [-1]),
            "stop_reason": ("DT_STRING", [-1]),
        },
    ),
    # The full-control signature: every setting of `settings.SPEC`.
    "generate": (
        {
            "prompt": ("DT_STRING", [-1]),
            **{
                name: ("DT_FLOAT" if kind == "f" else "DT_INT32", [-1])
                for name, kind in (
                    ("max_new_tokens", "i"),
                    ("max_length", "i"),
                    ("min_new_tokens", "i"),
                    ("temperature", "f"),
                    ("top_k", "i"),
                    ("top_p", "f"),
                    ("seed", "i"),
                    ("repetition_penalty", "f"),
                    ("no_repeat_ngram_size", "i"),
                    ("num_return_sequences", "i"),
                )
            },
            "stop": ("DT_STRING", [-1, -1]),
            "stop_ids": ("DT_INT32", [-1, -1]),
        },
        {
            "text": ("DT_STRING", [-1]),
            "token_ids": ("DT_INT32", [-1, -1]),
            "num_tokens": ("DT_INT32", [-1]),
            "stop_reason": ("DT_STRING", [-1]),
            "prompt_index": ("DT_INT32", [-1]),
        },
    ),
    "beam_search": (
        {
            "prompt": ("DT_STRING", [-1]),
            "max_new_tokens": ("DT_INT32", [-1]),
            "max_length": ("DT_INT32", [-1]),
            "num_beams": ("DT_INT32", [-1]),
            "num_return_sequences": ("DT_INT32", [-1]),
            "length_penalty": ("DT_FLOAT", [-1]),
            "early_stopping": ("DT_BOOL", [-1]),
        },
        {
            "text": ("DT_STRING", [-1]),
            "token_ids": ("DT_INT32", [-1, -1]),
            "num_tokens": ("DT_INT32", [-1]),
            "stop_reason": ("DT_STRING", [-1]),
            "score": ("DT_FLOAT", [-1]),
            "prompt_index": ("DT_INT32", [-1]),
        },
    ),
    "score": (
        {"text": ("DT_STRING", [-1])},
        {
            "log_likelihood": ("DT_FLOAT", [-1]),
            "num_tokens": ("DT_INT32", [-1]),
        },
    ),
    "tokenize": (
        {"text": ("DT_STRING", [-1])},
        {
            "token_ids": ("DT_INT32", [-1, -1]),
            "num_tokens": ("DT_INT32", [-1]),
        },
    ),
    "detokenize": (
        {
            "token_ids": ("DT_INT32", [-1, -1]),
            "num_tokens": ("DT_INT32", [-1]),
        },
        {"text": ("DT_STRING", [-1])},
    ),
}

# One row per case: greedy, sampled with each filter, multi-byte text, an
# empty prompt, top_k above the vocabulary, and a prompt longer than the
# context (cut from the left).
ROWS = [
    ("To be, or not to be", 12, 0.0, 0, 1.0, 0),
    ("Once upon", 16, 0.9, 20, 0.9, 7),
    ("héllo wörld 🙂", 10, 1.3, 0, 1.0, 3),
    ("", 5, 0.0, 0, 1.0, 0),
    ("the cat", 9, 0.7, 5, 0.5, 11),
    ("big k", 6, 1.0, 100_000, 1.0, 5),  # top_k above the vocab: clamped
    ("x" * 40 + "a long prompt that does not fit", 8, 0.0, 0, 1.0, 0),
]


def _vary(lm: CausalLM) -> CausalLM:
    """Random weights large enough that greedy text is not one repeated id."""
    rng = np.random.default_rng(0)
    for v in lm.weights:
        if len(v.shape) == 2:
            std = 1.0 if "embedding" in v.path else 1.5 / np.sqrt(v.shape[0])
            v.assign(rng.normal(0, std, v.shape).astype("float32"))
        else:
            v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype("float32"))
    return lm


@functools.cache
def workdir() -> str:
    path = tempfile.mkdtemp(prefix="tflm-export-tests-")
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.cache
def byte_model() -> CausalLM:
    keras.utils.set_random_seed(0)
    lm = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=CONTEXT
    )
    lm.tokenizer = ByteTokenizer()
    return _vary(lm)


@functools.cache
def byte_export() -> str:
    return export_lib.export(byte_model(), os.path.join(workdir(), "byte"))


@functools.cache
def chat_model() -> CausalLM:
    """The byte model, saved with tflm's template and loaded back."""
    path = os.path.join(workdir(), "chat_model")
    lm = byte_model()
    model_dir.save(
        lm, lm.tokenizer, path, metadata={"template": templates.TEMPLATE}
    )
    return CausalLM.from_preset(path)


@functools.cache
def chat_export() -> str:
    return export_lib.export(chat_model(), os.path.join(workdir(), "chat"))


@functools.cache
def sp_model() -> CausalLM:
    rng = random.Random(0)
    words = "to be or not that is the question whether tis nobler".split()
    lines = [" ".join(rng.choices(words, k=10)) + "\n" for _ in range(400)]
    trained = SentencePieceTokenizer.train(texts=lines, vocabulary_size=300)
    # Loaded back from its file, as `tflm.models.model_dir.load_model`
    # does: the file is then a tracked asset of the export.
    trained.save(os.path.join(workdir(), "sp_tokenizer"))
    tokenizer = SentencePieceTokenizer.load(
        os.path.join(workdir(), "sp_tokenizer")
    )
    keras.utils.set_random_seed(0)
    lm = CausalLM.from_preset(
        "tiny",
        vocabulary_size=tokenizer.vocabulary_size,
        max_sequence_length=CONTEXT,
    )
    lm.tokenizer = tokenizer
    return _vary(lm)


@functools.cache
def sp_export() -> str:
    return export_lib.export(sp_model(), os.path.join(workdir(), "sp"))


# Requests and answers ------------------------------------------------------
def as_json_string(value: str | bytes):
    """A prompt as TF Serving's REST API takes it (bytes as `b64`)."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def as_bytes(value) -> bytes:
    """A string from serving_check's JSON back to the exact bytes."""
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value.encode("utf-8")


def columnar(rows, signature: str = "serving_default") -> dict:
    """A columnar (`inputs`) REST body from `(prompt, *settings)` rows."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * 6
    inputs = {"prompt": [as_json_string(p) for p in columns[0]]}
    for name, values in zip(SETTINGS, columns[1:], strict=True):
        inputs[name] = list(values)
    return {"signature_name": signature, "inputs": inputs}


FULL_DEFAULTS = dict(
    max_new_tokens=-1,
    max_length=-1,
    min_new_tokens=0,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    num_return_sequences=1,
)


def full_request(rows: list[dict]) -> dict:
    """A columnar body for the `generate` signature from per-row dicts
    (`prompt`, any settings, `stop` a list of strings, `stop_ids`)."""
    width = max([len(r.get("stop", [])) for r in rows] + [1])
    id_width = max([len(r.get("stop_ids", [])) for r in rows] + [1])
    inputs = {"prompt": [r["prompt"] for r in rows]}
    for name, default in FULL_DEFAULTS.items():
        inputs[name] = [r.get(name, default) for r in rows]
    inputs["stop"] = [
        r.get("stop", []) + [""] * (width - len(r.get("stop", [])))
        for r in rows
    ]
    inputs["stop_ids"] = [
        r.get("stop_ids", []) + [-1] * (id_width - len(r.get("stop_ids", [])))
        for r in rows
    ]
    return {"signature_name": "generate", "inputs": inputs}


BEAM_DEFAULTS = dict(
    max_new_tokens=-1,
    max_length=-1,
    num_beams=4,
    num_return_sequences=1,
    length_penalty=1.0,
    early_stopping=False,
)


def beam_request(rows: list[dict]) -> dict:
    """A columnar body for the `beam_search` signature from per-row dicts."""
    inputs = {"prompt": [r["prompt"] for r in rows]}
    for name, default in BEAM_DEFAULTS.items():
        inputs[name] = [r.get(name, default) for r in rows]
    return {"signature_name": "beam_search", "inputs": inputs}


def generate(lm: CausalLM, rows, jit_compile: bool = False) -> dict:
    """`CausalLM.generate` on the rows, with their per-row settings."""
    columns = list(zip(*rows, strict=True))
    settings = dict(zip(SETTINGS, (list(c) for c in columns[1:]), strict=True))
    return lm.generate(
        list(columns[0]),
        **settings,
        jit_compile=jit_compile,
        return_details=True,
    )


def run_python(args: list[str], timeout: float = 300) -> dict:
    """Runs Python in a fresh process; returns its last stdout line as JSON."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1])


def serving_check(path: str, requests: list, warmup: bool = False) -> dict:
    """`tflm/export/serving_check.py` on `path`: TF Serving's conditions."""
    fd, request_file = tempfile.mkstemp(suffix=".json", dir=workdir())
    with os.fdopen(fd, "w") as f:
        json.dump(requests, f)
    args = [SERVING_CHECK, path, "--requests", request_file]
    return run_python(args + (["--warmup"] if warmup else []))
