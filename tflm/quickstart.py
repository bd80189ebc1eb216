"""The quickstart recipe: raw text to answers served the TF Serving way.

`run_quickstart` trains a SentencePiece tokenizer and a small model on the
user's text (by default the English Python documentation topics that every
CPython carries in `pydoc_data`, so it runs offline), evaluates it on
held-out text, exports a SavedModel and answers prompts from it in a fresh
process loaded as TF Serving loads it (TF1 `Session`, XLA off).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from tflm.errors import InputError
from tflm.models import presets

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS = ("The ", "A list ", 'The "for" statement ')


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """What `tflm quickstart` does; each field is also its flag.

    Args:
        out: folder for the corpus copy, the model and the export.
        data: the user's text; empty for the built-in Python docs.
        preset: architecture preset.
        steps: optimizer updates.
        vocabulary_size: SentencePiece ids trained on the corpus.
        batch_size: global batch, in sequences.
        max_new_tokens: tokens answered per prompt.
        prompts: prompts to answer; empty for defaults from the corpus.
    """

    out: str = "tflm-quickstart"
    data: tuple[str, ...] = ()
    preset: str = "mini"
    steps: int = 500
    vocabulary_size: int = 1024
    batch_size: int = 16
    max_new_tokens: int = 48
    prompts: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("steps", "vocabulary_size", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(
                    f"--{name.replace('_', '-')} must be at least 1. "
                    f"Received: {name}={getattr(self, name)}."
                )
        context = presets.get_preset(self.preset)["max_sequence_length"]
        if not 1 <= self.max_new_tokens < context:
            raise InputError(
                f"--max-new-tokens must be between 1 and {context - 1}, the "
                f"context of preset {self.preset!r} less one. Received: "
                f"max_new_tokens={self.max_new_tokens}."
            )


def write_default_corpus(directory: str) -> str:
    """Writes the Python docs topics as `.jsonl` documents; returns the path.

    Example:
    >>> import json, tempfile
    >>> path = write_default_corpus(tempfile.mkdtemp())
    >>> len(open(path).readlines()) > 50
    True
    """
    from pydoc_data import topics

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "python-docs.jsonl")
    temp = f"{path}.tmp"
    with open(temp, "w", encoding="utf-8") as f:
        for name in sorted(topics.topics):
            f.write(json.dumps({"text": topics.topics[name]}) + "\n")
    os.replace(temp, path)
    return path


def train_config(config: QuickstartConfig, data: Sequence[str]):
    """The `TrainConfig` of the quickstart's model."""
    from tflm.train import config as train_config_lib

    return train_config_lib.TrainConfig(
        data=tuple(data),
        out=os.path.join(config.out, "model"),
        preset=config.preset,
        tokenizer=f"sentencepiece:{config.vocabulary_size}",
        steps=config.steps,
        batch_size=config.batch_size,
        learning_rate=2e-3,
        min_learning_rate=2e-4,
        warmup_steps=min(50, config.steps // 10),
        beta_2=0.99,
        weight_decay=0.1,
        dropout=0.0,
        checkpoint_every=200,
        validate_every=0,
        eval_batches=0,
    )


def serve_answers(
    saved_model: str, prompts: Sequence[str], max_new_tokens: int
) -> list[str]:
    """Answers `prompts` from a fresh process that loads `saved_model` the
    way TF Serving does (`serving_check.py`: TF1 Session, XLA off), sampled
    at temperature 0.8, top-p 0.95, seed = the prompt's index."""
    from tflm.export import serving_check

    body = {
        "signature_name": "serving_default",
        "instances": [
            {
                "prompt": p,
                "max_new_tokens": max_new_tokens,
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
        command = [sys.executable, serving_check.__file__, saved_model]
        done = subprocess.run(
            command + ["--requests", f.name, "--warmup"],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    if done.returncode:
        raise RuntimeError(f"serving check failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout)["results"][0]
    if "error" in result:
        raise RuntimeError(f"serving check failed: {result['error']}")
    return [_text(t) for t in result["outputs"]["text"]]


def _text(value) -> str:
    """A served string: text, or `{"b64": ...}` bytes decoded leniently."""
    if isinstance(value, dict):
        import base64

        return base64.b64decode(value["b64"]).decode("utf-8", "replace")
    return value
