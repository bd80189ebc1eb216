"""One measurement of `pipeline.py --prepared`, in a fresh process, so that
its peak RSS is its own.

    python benchmarks/prepared_child.py JOB SPEC_JSON

prints one JSON line. Jobs:
- `tokenizers`: saves the byte tokenizer and a SentencePiece one trained on
  `spec["texts"]` to `spec["out"]/byte` and `spec["out"]/sentencepiece`.
- `prepare`: `tflm.data.prepare` of `spec["corpus"]` into `spec["out"]`;
  seconds, tokens, and the RSS before it started and the peak after.
- `read`: batches of `spec["batch_size"]` x `spec["sequence_length"]`
  from a prepared folder (`tflm.data.prepared`) or from text files (the
  in-memory `tflm.data.make_dataset`): seconds from calling `make_dataset`
  to the first batch, then tokens/s of batches consumed in-graph
  (`throughput`), and the peak RSS.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # Before TensorFlow is imported.

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tflm import data  # noqa: E402
from tflm import tokenizers  # noqa: E402
from tflm.data import prepared  # noqa: E402
from tflm.tokenizers import base  # noqa: E402

MB = 1e6


def rss_mb() -> float:
    """The resident set now, in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / MB, 1)


def peak_rss_mb() -> float:
    """The peak resident set of this process so far, in MB."""
    return round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, 1
    )


def tokenizers_job(spec: dict) -> dict:
    start = time.perf_counter()
    sentencepiece = tokenizers.SentencePieceTokenizer.train(
        spec["texts"], vocabulary_size=spec["vocabulary_size"]
    )
    seconds = time.perf_counter() - start
    described = {}
    for name, tokenizer in (
        ("byte", tokenizers.ByteTokenizer()),
        ("sentencepiece", sentencepiece),
    ):
        directory = os.path.join(spec["out"], name)
        tokenizer.save(directory)
        described[name] = dict(
            directory=directory,
            vocabulary_size=tokenizer.vocabulary_size,
            newline_is_boundary=tokenizer.newline_is_boundary,
        )
    described["sentencepiece"]["train_seconds"] = round(seconds, 2)
    return described


def prepare_job(spec: dict) -> dict:
    tokenizer = base.load_tokenizer(spec["tokenizer"])
    rss_before, peak_before = rss_mb(), peak_rss_mb()
    start = time.perf_counter()
    manifest = data.prepare(
        spec["corpus"],
        tokenizer,
        spec["out"],
        threads=spec["threads"],
        progress=False,
    )
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    text_bytes = sum(s["size"] for s in manifest["sources"])
    return dict(
        tokens=manifest["tokens"],
        shards=len(manifest["shards"]),
        seconds=round(seconds, 2),
        tokens_per_s=round(manifest["tokens"] / seconds),
        mb_per_s=round(text_bytes / MB / seconds, 2),
        rss_before_mb=rss_before,
        peak_rss_before_mb=peak_before,
        peak_rss_mb=peak,
        peak_rss_growth_mb=round(peak - rss_before, 1),
    )


def _consumer(dataset: tf.data.Dataset):
    """`consume(n)`: takes `n` batches from one iterator of `dataset`
    in-graph (a `tf.function` loop, as `fit` with `steps_per_execution`
    runs), returning the tokens of their labels."""
    iterator = iter(dataset)

    @tf.function
    def consume(n):
        total = tf.constant(0, tf.int64)
        for _ in tf.range(n):
            _, y, _ = next(iterator)
            total += tf.size(y, tf.int64)
        return total

    return consume


def throughput(dataset: tf.data.Dataset, seconds: float) -> dict:
    """Tokens/s of batches consumed in-graph for about `seconds`, after a
    warm-up on the same iterator (which starts it: reads the first shards,
    or fills a shuffle buffer)."""
    consume = _consumer(dataset)
    int(consume(tf.constant(4)))  # Warm-up: traces and starts the iterator.
    tokens, elapsed, batches, n = 0, 0.0, 0, 8
    while elapsed < seconds:
        start = time.perf_counter()
        tokens += int(consume(tf.constant(n)))
        took = time.perf_counter() - start
        elapsed += took
        batches += n
        if took < 0.5:
            n *= 2
    return dict(
        tokens_per_s=round(tokens / elapsed),
        batches=batches,
        seconds=round(elapsed, 2),
    )


def _maker(spec: dict, tokenizer: base.Tokenizer):
    if spec["in_memory"]:
        return lambda **shape: data.make_dataset(
            spec["source"], tokenizer, repeat=True, **shape
        )
    return lambda **shape: prepared.make_dataset(
        spec["source"], tokenizer, repeat=True, **shape
    )


def read_job(spec: dict) -> dict:
    tokenizer = base.load_tokenizer(spec["tokenizer"])
    make = _maker(spec, tokenizer)
    shape = dict(
        batch_size=spec["batch_size"], sequence_length=spec["sequence_length"]
    )
    rss_before = rss_mb()
    start = time.perf_counter()
    dataset = make(**shape)
    next(iter(dataset))
    now = time.perf_counter()
    return dict(
        shape,
        first_batch_seconds=round(now - start, 2),
        # TensorFlow's import included (`tflm train` also pays it).
        first_batch_seconds_from_process_start=round(now - STARTED, 2),
        **throughput(dataset, spec["seconds"]),
        rss_before_mb=rss_before,
        peak_rss_mb=peak_rss_mb(),
    )


JOBS = {"tokenizers": tokenizers_job, "prepare": prepare_job, "read": read_job}

if __name__ == "__main__":
    job, spec = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(JOBS[job](spec)), flush=True)
