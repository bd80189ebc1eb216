"""`pipeline.py --prepared`: prepared token shards against the targets.

For each corpus size of `--sizes` (MB; 100 and 1000 by default), a corpus
of copies of Tiny Shakespeare and 红楼梦 (`--data-dir`; synthetic text,
with a note, where they are missing) is written to a temporary folder, in
files of about `--file-mb`, and removed afterwards. Then, each in a fresh
process (`prepared_child.py`):
- `tflm.data.prepare` with the byte tokenizer and a SentencePiece one
  (`--vocabulary-size`, trained once on the source text), with each of
  `--threads`: tokens/s, MB/s of text, the RSS before it started and the
  peak;
- batches from the prepared folder (`tflm.data.prepared.make_dataset`,
  `repeat=True`): seconds from calling `make_dataset` to the first batch
  (the data side of the time to the first training step), and tokens/s
  consumed in-graph for each `--shapes` `BxT`;
- the same for the in-memory pipeline (`tflm.data.make_dataset` of the text
  files) on corpora up to `--in-memory-max-mb`, with its peak RSS.
MB are 10^6 bytes. The files are in the page cache when they are read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import prepared_targets as targets

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "prepared_child.py")
SOURCES = ("tinyshakespeare.txt", "hongloumeng.txt")
MB = 10**6
TOKENIZERS = ("byte", "sentencepiece")
NOTES = [
    "MB = 10^6 bytes. Peak RSS: ru_maxrss of the fresh process; "
    "rss_before_mb: its resident set (statm) once TensorFlow was imported "
    "and the tokenizer loaded, just before the measured call.",
    "prepare tokens_per_s and mb_per_s: over the whole `prepare` call "
    "(source hashing, tokenizing, writing shards), TensorFlow's import "
    "excluded; process_seconds: the whole child process.",
    "read tokens_per_s: label tokens of batches taken in-graph from one "
    "iterator (a tf.function loop, as fit's steps_per_execution) for "
    "--read-seconds, after a warm-up on that iterator; each shape in a "
    "fresh process. first_batch_seconds: from calling make_dataset to "
    "next(iter(ds)); first_batch_seconds_from_process_start adds "
    "TensorFlow's import.",
    "Files are written just before they are read, so they are in the page "
    "cache. Other processes on the machine skew every figure: see the "
    "load averages.",
]
logger = logging.getLogger("pipeline.prepared")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--prepared")
    group.add_argument("--sizes", default="100,1000", help="corpus MB list")
    group.add_argument("--threads", default="1,2", help="prepare threads")
    group.add_argument("--tokenizers", default=",".join(TOKENIZERS))
    group.add_argument(
        "--shapes", default="8x256,32x1024", help="BxT list for reading"
    )
    group.add_argument(
        "--read-seconds", type=float, default=4.0, help="per shape"
    )
    group.add_argument(
        "--in-memory-max-mb",
        type=float,
        default=100,
        help="largest corpus read by the in-memory pipeline too",
    )
    group.add_argument(
        "--file-mb", type=float, default=32, help="corpus file size"
    )
    group.add_argument("--work-dir", default=None, help="temp folder parent")


def source_texts(data_dir: str) -> tuple[list[bytes], str | None]:
    """The shared texts, or synthetic text and a note saying why."""
    paths = [os.path.join(data_dir, name) for name in SOURCES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        texts = []
        for path in paths:
            with open(path, "rb") as f:
                texts.append(f.read())
        return texts, None
    rng = random.Random(0)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 9)))
        for _ in range(5000)
    ]
    lines = [" ".join(rng.choices(words, k=12)) for _ in range(60_000)]
    note = f"{', '.join(missing)} not found: synthetic text (random words)"
    return ["\n".join(lines).encode() + b"\n"], note


def write_corpus(folder, size, texts, file_bytes) -> tuple[list[str], int]:
    """Copies of `texts` in files of about `file_bytes`, `size` bytes in
    all (cut after a newline); their paths and total size."""
    piece = b"".join(t if t.endswith(b"\n") else t + b"\n" for t in texts)
    os.makedirs(folder)
    files, written = [], 0
    while written < size:
        path = os.path.join(folder, f"corpus-{len(files):04d}.txt")
        left = min(file_bytes, size - written)
        with open(path, "wb") as f:
            while left > 0:
                chunk = piece
                if len(chunk) > left:
                    chunk = piece[: piece.rfind(b"\n", 0, left) + 1]
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
                written += len(chunk)
        if not os.path.getsize(path):
            os.remove(path)
            break
        files.append(path)
    return files, written


def run_child(job: str, spec: dict) -> dict:
    """`prepared_child.py JOB SPEC` in a fresh process: its JSON, or
    `{"error": ...}`."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, CHILD, job, json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    wall = round(time.perf_counter() - start, 1)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-3:], "wall": wall}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if isinstance(result, dict) and job != "tokenizers":
        result["process_seconds"] = wall
    return result


def prepare_rows(size_mb, files, tokenizer_dirs, threads, folder):
    """Prepare runs of one corpus; the last folder of each tokenizer is
    kept for reading."""
    rows, kept = [], {}
    for name, tokenizer in tokenizer_dirs.items():
        for count in threads:
            out = os.path.join(folder, f"prepared-{name}-{count}")
            spec = dict(corpus=files, tokenizer=tokenizer, out=out)
            row = dict(corpus_mb=size_mb, tokenizer=name, threads=count)
            row.update(run_child("prepare", dict(spec, threads=count)))
            targets.annotate_prepare(row)
            logger.info("prepare: %s", json.dumps(row))
            rows.append(row)
            if name in kept:
                shutil.rmtree(kept[name], ignore_errors=True)
            kept[name] = out
    return rows, kept


def read_row(size_mb, name, source, tokenizer, args, in_memory):
    """Reading batches of each shape, each in a fresh process."""
    row = dict(
        corpus_mb=size_mb,
        tokenizer=name,
        pipeline="in_memory" if in_memory else "prepared",
        shapes=[],
    )
    for batch_size, sequence_length in args.shape_list:
        spec = dict(
            source=source,
            tokenizer=tokenizer,
            batch_size=batch_size,
            sequence_length=sequence_length,
            seconds=args.read_seconds,
            in_memory=in_memory,
        )
        shape = run_child("read", spec)
        if "error" in shape:
            shape.update(batch_size=batch_size, sequence_length=sequence_length)
        row["shapes"].append(shape)
    if not in_memory:
        targets.annotate_read(row)
    logger.info("read: %s", json.dumps(row))
    return row


def measure_size(size_mb, texts, tokenizer_dirs, args, folder) -> dict:
    """Everything for one corpus size, in `folder` (removed after)."""
    files, written = write_corpus(
        os.path.join(folder, "corpus"),
        int(size_mb * MB),
        texts,
        int(args.file_mb * MB),
    )
    corpus = dict(corpus_mb=size_mb, bytes=written, files=len(files))
    threads = [int(t) for t in args.threads.split(",")]
    prepares, kept = prepare_rows(
        size_mb, files, tokenizer_dirs, threads, folder
    )
    reads = [
        read_row(size_mb, name, kept[name], tokenizer_dirs[name], args, False)
        for name in tokenizer_dirs
    ]
    if size_mb <= args.in_memory_max_mb:
        reads += [
            read_row(size_mb, name, files, tokenizer_dirs[name], args, True)
            for name in tokenizer_dirs
        ]
    return dict(corpus=corpus, prepare=prepares, read=reads)


def train_tokenizers(texts: list[bytes], folder: str, args) -> dict:
    """The byte and SentencePiece tokenizers, saved under `folder`."""
    source = os.path.join(folder, "source.txt")
    with open(source, "wb") as f:
        f.write(b"".join(texts))
    tokenizers = run_child(
        "tokenizers",
        dict(
            texts=[source],
            vocabulary_size=args.vocabulary_size,
            out=os.path.join(folder, "tokenizers"),
        ),
    )
    if "error" in tokenizers:
        raise RuntimeError(f"training the tokenizers: {tokenizers['error']}")
    return tokenizers


def run(args: argparse.Namespace, host: dict) -> None:
    """Measures every size and prints one JSON object."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    unused = ("prepared", "sequence_length", "batch_size")
    report = dict(host=host, load_average_before=os.getloadavg()[0])
    report["settings"] = {
        k: v for k, v in vars(args).items() if k not in unused
    }
    args.shape_list = [
        [int(n) for n in shape.split("x")] for shape in args.shapes.split(",")
    ]
    texts, note = source_texts(args.data_dir)
    report["text"] = note or f"copies of {', '.join(SOURCES)}"
    report["notes"] = NOTES
    report["corpora"], report["prepare"], report["read"] = [], [], []
    folder = tempfile.mkdtemp(prefix="tflm-bench-prepared-", dir=args.work_dir)
    try:
        report["tokenizers"] = train_tokenizers(texts, folder, args)
        dirs = {
            name: report["tokenizers"][name]["directory"]
            for name in args.tokenizers.split(",")
        }
        for size in [float(s) for s in args.sizes.split(",")]:
            work = os.path.join(folder, f"size-{size:g}")
            os.makedirs(work)
            result = measure_size(size, texts, dirs, args, work)
            shutil.rmtree(work, ignore_errors=True)
            report["corpora"].append(result["corpus"])
            report["prepare"] += result["prepare"]
            report["read"] += result["read"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report["prepared_over_in_memory"] = targets.comparisons(report["read"])
    report["targets"] = (
        targets.rss_verdicts(report["prepare"])
        + targets.sentencepiece_verdicts(report["prepare"])
        + targets.read_verdicts(report["read"])
    )
    report["meets_all_targets"] = all(v["meets"] for v in report["targets"])
    report["load_average_after"] = os.getloadavg()[0]
    report["wall_seconds"] = round(time.perf_counter() - started)
    print(json.dumps(report, indent=2, ensure_ascii=False), flush=True)
