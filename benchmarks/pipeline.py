"""Data pipeline and tokenizer training speed, as JSON lines.

Measures, on Tiny Shakespeare and on 红楼梦 from `../shared/data`:
- SentencePiece training time (BPE, 8192 pieces) and its compression;
- `tflm.data.make_dataset` throughput in tokens/s for the byte and the
  SentencePiece tokenizer: the first epoch (tokenizing, packing, shuffling,
  batching from cold) and a second one, iterated from Python as `fit` would.

With `--prepared`, prepared token shards instead (`prepared_data.py`):
`tflm.data.prepare` speed and peak RSS on generated corpora of `--sizes`
MB, batches read from the shards, and the in-memory pipeline beside them,
as one JSON object with the targets next to each figure.

Usage: python benchmarks/pipeline.py [--data-dir DIR] [--sequence-length N]
       python benchmarks/pipeline.py --prepared [--sizes 100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import hostinfo
import prepared_data

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tflm import data  # noqa: E402
from tflm import tokenizers  # noqa: E402

DATA_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"
)
CORPORA = {
    "tinyshakespeare": ("tinyshakespeare.txt", ("document", "paragraph")),
    "hongloumeng": ("hongloumeng.txt", ("document", "line")),
}


def emit(**fields) -> None:
    print(json.dumps(fields, ensure_ascii=False), flush=True)


def train_sentencepiece(name: str, path: str, vocabulary_size: int):
    start = time.perf_counter()
    tokenizer = tokenizers.SentencePieceTokenizer.train(
        [path], vocabulary_size=vocabulary_size
    )
    seconds = time.perf_counter() - start
    with open(path, encoding="utf-8") as f:
        sample = [f.read()]
    emit(
        benchmark="sentencepiece_train",
        corpus=name,
        model_type="bpe",
        vocabulary_size=tokenizer.vocabulary_size,
        seconds=round(seconds, 3),
        chars_per_token=round(tokenizers.chars_per_token(tokenizer, sample), 3),
    )
    return tokenizer


def epoch(dataset: tf.data.Dataset) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = 0
    for _, y, _ in dataset:
        tokens += int(tf.size(y))
    return tokens, time.perf_counter() - start


def measure(name, path, tokenizer_name, tokenizer, text_format, args) -> None:
    start = time.perf_counter()
    dataset = data.make_dataset(
        path,
        tokenizer,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        split="all",
        text_format=text_format,
    )
    build = time.perf_counter() - start
    first_tokens, first = epoch(dataset)
    tokens, seconds = epoch(dataset)
    emit(
        benchmark="pipeline",
        corpus=name,
        tokenizer=tokenizer_name,
        text_format=text_format,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        tokens=tokens,
        seconds=round(seconds, 3),
        tokens_per_s=round(tokens / seconds),
        first_epoch_tokens_per_s=round(first_tokens / first),
        build_seconds=round(build, 3),
        cpus=os.cpu_count(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocabulary-size", type=int, default=8192)
    parser.add_argument(
        "--prepared",
        action="store_true",
        help="measure prepared token shards (see prepared_data.py)",
    )
    prepared_data.add_arguments(parser)
    args = parser.parse_args()
    if args.prepared:
        # Each measurement runs in a fresh process (`prepared_child.py`).
        prepared_data.run(args, hostinfo.describe())
        return
    hostinfo.emit()
    for name, (file_name, formats) in CORPORA.items():
        path = os.path.abspath(os.path.join(args.data_dir, file_name))
        if not os.path.isfile(path):
            emit(benchmark="pipeline", corpus=name, skipped=f"{path} not found")
            continue
        sentencepiece = train_sentencepiece(name, path, args.vocabulary_size)
        for tokenizer_name, tokenizer in (
            ("byte", tokenizers.ByteTokenizer()),
            ("sentencepiece", sentencepiece),
        ):
            for text_format in formats:
                measure(
                    name, path, tokenizer_name, tokenizer, text_format, args
                )


if __name__ == "__main__":
    main()
