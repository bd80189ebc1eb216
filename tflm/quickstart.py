"""The quickstart recipe: raw text to answers served the TF Serving way.

`tflm quickstart` trains a SentencePiece tokenizer (sized to the text's
characters, see `vocabulary_size_for`) and a small model on the user's text
(by default the English Python documentation topics that every CPython
carries in `pydoc_data`, so it runs offline), evaluates it on held-out
text, exports a SavedModel and answers prompts from it in a fresh process
loaded as TF Serving loads it (TF1 `Session`, XLA off). The prompts are the
openings of held-out lines of the same text (`corpus_prompts`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from tflm.errors import InputError
from tflm.models import presets

logger = logging.getLogger(__name__)

# The vocabulary's pieces besides the text's characters: 256 byte pieces
# (byte fallback) and pad, unk, bos, eos and "\n".
FIXED_PIECES = 261
MIN_VOCABULARY_SIZE = 1024
# SentencePiece's default, which `tflm tokenizer train` uses too.
CHARACTER_COVERAGE = 0.9995
# Characters read to size the vocabulary and lines read to pick prompts.
_SAMPLE_CHARS = 10_000_000
_PROMPT_LINES = 10_000


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """What `tflm quickstart` does; each field is also its flag.

    Args:
        out: folder for the corpus copy, the model and the export.
        data: the user's text; empty for the built-in Python docs.
        preset: architecture preset.
        steps: optimizer updates.
        vocabulary_size: SentencePiece ids trained on the corpus; `None`
            sizes it to the corpus (`vocabulary_size_for`).
        batch_size: global batch, in sequences.
        max_new_tokens: tokens answered per prompt.
        prompts: prompts to answer; empty for openings of held-out lines
            of the corpus (`corpus_prompts`).
    """

    out: str = "tflm-quickstart"
    data: tuple[str, ...] = ()
    preset: str = "mini"
    steps: int = 500
    vocabulary_size: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 48
    prompts: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("steps", "vocabulary_size", "batch_size"):
            if name == "vocabulary_size" and self.vocabulary_size is None:
                continue
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


def vocabulary_size_for(data: Sequence[str]) -> tuple[int, int]:
    """A SentencePiece vocabulary size that fits the corpus's characters.

    SentencePiece gives each character a piece of its own, most frequent
    first, until they cover `CHARACTER_COVERAGE` of the text (the rest fall
    back to bytes), so the vocabulary must hold those characters and the
    `FIXED_PIECES`. The size is that plus a quarter for merges, rounded up
    to a multiple of 256, and at least `MIN_VOCABULARY_SIZE`: 1,024 for
    English text, about 5,000 for a Chinese novel. The first 10 million
    characters are counted.

    Args:
        data: text files, folders or globs (`.txt`, `.jsonl`).

    Returns:
        `(vocabulary size, characters that need a piece)`.

    Raises:
        InputError: a file is not UTF-8 (naming it, the line and the byte).

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "abc.txt")
    >>> _ = open(path, "w", encoding="utf-8").write("abc" * 100)
    >>> vocabulary_size_for([path])
    (1024, 3)
    """
    from tflm.data import corpus
    from tflm.data import files

    paths = files.find_files(data)
    for path in paths:
        if not path.endswith(".jsonl"):  # .jsonl: checked as read.
            corpus.check_utf8(path)
    counts = collections.Counter()
    for text in corpus.sample_texts(paths, _SAMPLE_CHARS):
        counts.update(text)
    counts.pop("\n", None)  # A fixed piece; lines are SentencePiece's unit.
    enough = CHARACTER_COVERAGE * sum(counts.values())
    covered, needed = 0, 0
    for _, count in counts.most_common():
        if covered >= enough:
            break
        covered += count
        needed += 1
    pieces = FIXED_PIECES + needed
    size = math.ceil(pieces * 1.25 / 256) * 256
    return max(size, MIN_VOCABULARY_SIZE), needed


def corpus_prompts(data: Sequence[str], count: int = 3) -> list[str]:
    """Prompts from the corpus: the openings of `count` held-out lines.

    The lines are those `tflm train` validates on (its default split of
    `data`, less a line that the held-out tail cuts; all of `data` when
    that holds none), taken evenly spaced from the first 10,000 that have
    something to continue: at least four words, or 16 characters in a
    script written without spaces. A prompt is a line's first three words,
    or its first four characters.

    Args:
        data: text files, folders or globs (`.txt`, `.jsonl`).
        count: how many prompts.

    Returns:
        Up to `count` distinct prompts, the same for the same corpus.
    """
    from tflm.data import files
    from tflm.data import split

    paths = files.find_files(data)
    mode = split.resolve_split(paths, 0.1)
    for part in ("validation", "all"):
        lines = []
        docs = split.split_documents(paths, part, 0.1, split_mode=mode)
        # A held-out tail starts inside a line.
        cut = part == "validation" and mode == "tail"
        for batch in docs.as_numpy_iterator():
            for doc in batch:
                text = doc.decode("utf-8", "replace").split("\n")[cut:]
                lines += [p for p in map(_opening, text) if p]
            if len(lines) >= _PROMPT_LINES:
                break
        lines = lines[:_PROMPT_LINES]
        if lines:
            chosen = [lines[i * len(lines) // count] for i in range(count)]
            return list(dict.fromkeys(chosen))
    return []


def _opening(line: str) -> str | None:
    """The first words of `line`, or `None` if it is too short."""
    words = line.split()
    if len(words) >= 4:
        return " ".join(words[:3])
    line = line.strip()
    if len(words) == 1 and len(line) >= 16:
        return line[:4]
    return None


def train_config(
    config: QuickstartConfig, data: Sequence[str], vocabulary_size: int
):
    """The `TrainConfig` of the quickstart's model (the preset's learning
    rate, see `tflm.models.presets.LEARNING_RATES`)."""
    from tflm.train import config as train_config_lib

    return train_config_lib.TrainConfig(
        data=tuple(data),
        out=os.path.join(config.out, "model"),
        preset=config.preset,
        tokenizer=f"sentencepiece:{vocabulary_size}",
        steps=config.steps,
        batch_size=config.batch_size,
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
