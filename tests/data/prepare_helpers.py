"""Corpora, tokenizers and readers shared by the prepared-shard tests."""

import json
import os
import random
import subprocess
import sys

import gpt2_files
import numpy as np

from tflm import data
from tflm.data import shards
from tflm.tokenizers import gpt2_bpe

# English, Chinese and emoji, with whitespace that tokenizers treat apart:
# ideographic spaces (U+3000), a vertical tab, trailing runs, blank lines.
LINES = [
    "The quick brown fox, it's 12 o'clock; they'll see.",
    "红楼梦 第一回 甄士隐梦幻识通灵，贾雨村风尘怀闺秀。",
    "emoji 🙂🍕 👩‍👩‍👧 and a tab\tinside",
    "\u3000\u3000indented with ideographic spaces",
    "\x0bvertical tab first",
    "trailing spaces   ",
    "trailing ideographic space\u3000",
    "",
    "  ",
    "\u3000",
]
BREAKS = ["\n", "\n", "\n", "\r\n", "\n\n", "\n \n", "\n\n\n", " \n"]


def mixed_text(lines: int, seed: int) -> str:
    """`lines` seeded lines of `LINES` joined by seeded `BREAKS`."""
    rng = random.Random(seed)
    parts = []
    for i in range(lines):
        parts.append(f"{i} {rng.choice(LINES)}" if i % 3 else rng.choice(LINES))
        parts.append(rng.choice(BREAKS))
    return "".join(parts)


def write_mixed_corpus(folder) -> str:
    """Text and `.jsonl` files of `mixed_text`, a whitespace-only file and
    blank `.jsonl` records; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "a.txt"), "w", encoding="utf-8") as f:
        f.write(mixed_text(200, seed=1))
    with open(os.path.join(folder, "b.txt"), "w", encoding="utf-8") as f:
        f.write("红楼梦，一名石头记。" + mixed_text(40, seed=2))  # no final \n
    with open(os.path.join(folder, "blank.txt"), "w", encoding="utf-8") as f:
        f.write(" \n\t\r\n\n  \n")
    records = [{"text": mixed_text(12, seed=s)} for s in range(3, 30)]
    records[5]["text"] = " \n\n "  # a blank record
    records[9]["text"] = ""
    lines = [
        json.dumps(r, ensure_ascii=s % 2 == 0) for s, r in enumerate(records)
    ]
    lines[20:20] = ["", "   "]  # blank lines between records
    with open(os.path.join(folder, "c.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(folder)


def gpt2_tokenizer(directory, id_offset: int = 0):
    """A small GPT-2 BPE whose merges join whitespace runs, as GPT-2's own
    do (`"\\n\\n"` is one token there); ids shifted by `id_offset`."""
    ends = ["Hello\n\n", "end \n", "x\u3000\n", "y\n\u3000", "z\r\n"]
    texts = gpt2_files.TEXTS + ends * 20
    vocab, merges = gpt2_files.train_bpe(texts=texts, num_merges=120)
    assert {"Ċ Ċ", "Ġ Ċ", "č Ċ", "Ċ ãĢĢ"} <= set(merges), merges
    vocab = {token: i + id_offset for token, i in vocab.items()}
    os.makedirs(directory, exist_ok=True)
    gpt2_files.write_tokenizer(str(directory), vocab, merges)
    return gpt2_bpe.GPT2BPETokenizer.from_directory(str(directory))


def shard_ids(directory, manifest=None, split=None) -> np.ndarray:
    """The ids of the shards of a prepared folder, concatenated in order."""
    if manifest is None:
        with open(os.path.join(directory, shards.MANIFEST)) as f:
            manifest = json.load(f)
    dtype = np.dtype(manifest["settings"]["dtype"]).newbyteorder("<")
    parts = [
        np.fromfile(os.path.join(directory, shard["file"]), dtype=dtype)
        for shard in manifest["shards"]
        if split is None or shard["split"] == split
    ]
    return np.concatenate(parts).astype(np.int64)


def stream_ids(paths, tokenizer, cache_dir, **kwargs) -> np.ndarray:
    """The ids of the in-memory pipeline for the same files."""
    files = data.find_files(paths)
    batches = data.read_document_batches(files, cache_dir=cache_dir, **kwargs)
    chunks = data.token_stream(batches, tokenizer).as_numpy_iterator()
    return np.concatenate(list(chunks)).astype(np.int64)


def folder_files(directory) -> dict:
    """`{relative path: bytes}` of every file under `directory`."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


def shard_stats(directory) -> dict:
    """`{shard file: (inode, mtime_ns)}`."""
    return {
        name: (os.stat(p).st_ino, os.stat(p).st_mtime_ns)
        for name in os.listdir(directory)
        if name.endswith(shards.SHARD_SUFFIX)
        for p in [os.path.join(directory, name)]
    }


def write_repeated(path, megabytes: float, seed: int = 0) -> None:
    """A text file of about `megabytes` MB of seeded lines."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "红楼梦", "🙂", "delta", "the", "of"]
    lines = [
        " ".join(rng.choice(words) for _ in range(rng.randint(5, 400))) + "\n"
        for _ in range(64)
    ]
    block = "".join(lines).encode()
    with open(path, "wb") as f:
        for _ in range(int(megabytes * 1e6) // len(block) + 1):
            f.write(block)


def child_env() -> dict:
    """This environment for a child Python, quiet TensorFlow logs."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def run_child(code: str, *args, timeout: int = 120) -> str:
    """Runs `code` in a new Python (`sys.argv[1:]` are `args`); its stdout."""
    process = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout
