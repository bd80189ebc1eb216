"""The targets of the prepared-data issue, beside the figures of
`pipeline.py --prepared`, and a verdict on each."""

from __future__ import annotations

# The targets of the prepared-data issue.
TARGET_PEAK_RSS_MB = 1000  # prepare of 1 GB of text
FLAT_TOLERANCE = 0.10  # "flat": peak at the largest size / smallest - 1
TARGET_FIRST_BATCH_SECONDS = 10.0  # whatever the corpus size
TARGET_READ_TOKENS_PER_S = 20e6  # batches from shards
TARGET_SENTENCEPIECE_TOKENS_PER_S = 1e6  # prepare, on 2 cores


def annotate_prepare(row: dict) -> None:
    """Adds the targets of a prepare run, and whether it meets them."""
    row["target_peak_rss_mb"] = TARGET_PEAK_RSS_MB
    if "peak_rss_mb" in row:
        row["meets_peak_rss_target"] = row["peak_rss_mb"] <= TARGET_PEAK_RSS_MB
    if row["tokenizer"] == "sentencepiece":
        row["target_tokens_per_s"] = TARGET_SENTENCEPIECE_TOKENS_PER_S
        if "tokens_per_s" in row:
            row["meets_tokens_per_s_target"] = (
                row["tokens_per_s"] >= TARGET_SENTENCEPIECE_TOKENS_PER_S
            )


def annotate_read(row: dict) -> None:
    """Adds the targets of reading prepared shards to each shape, and
    whether it meets them."""
    for shape in _measured(row):
        shape["target_first_batch_seconds"] = TARGET_FIRST_BATCH_SECONDS
        shape["meets_first_batch_target"] = (
            shape["first_batch_seconds"] <= TARGET_FIRST_BATCH_SECONDS
        )
        shape["target_tokens_per_s"] = TARGET_READ_TOKENS_PER_S
        shape["meets_tokens_per_s_target"] = (
            shape["tokens_per_s"] >= TARGET_READ_TOKENS_PER_S
        )


def _measured(row: dict) -> list[dict]:
    """The shapes of a read row that did not fail."""
    return [shape for shape in row["shapes"] if "tokens_per_s" in shape]


def _verdict(target: str, value, meets: bool, where) -> dict:
    return dict(target=target, value=value, meets=meets, where=where)


def rss_verdicts(prepares: list[dict]) -> list[dict]:
    """Peak RSS at the largest size, and its growth from the smallest, for
    each tokenizer and thread count."""
    verdicts = []
    runs: dict[tuple, list[dict]] = {}
    for row in prepares:
        if "peak_rss_mb" in row:
            runs.setdefault((row["tokenizer"], row["threads"]), []).append(row)
    for (name, threads), rows in runs.items():
        rows.sort(key=lambda r: r["corpus_mb"])
        small, large = rows[0], rows[-1]
        where = dict(tokenizer=name, threads=threads)
        verdicts.append(
            _verdict(
                f"prepare peak RSS <= {TARGET_PEAK_RSS_MB} MB for 1 GB",
                large["peak_rss_mb"],
                large["peak_rss_mb"] <= TARGET_PEAK_RSS_MB,
                dict(where, corpus_mb=large["corpus_mb"]),
            )
        )
        if large is small:
            continue
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
        verdicts.append(
            _verdict(
                "prepare peak RSS flat from 100 MB to 1 GB (growth "
                f"<= {FLAT_TOLERANCE:.0%})",
                dict(
                    growth=round(ratio, 3),
                    growth_mb=round(
                        large["peak_rss_mb"] - small["peak_rss_mb"]
                    ),
                ),
                ratio <= FLAT_TOLERANCE,
                dict(where, corpus_mb=[small["corpus_mb"], large["corpus_mb"]]),
            )
        )
    return verdicts


def sentencepiece_verdicts(prepares: list[dict]) -> list[dict]:
    """Prepare speed with SentencePiece at each size, at its fastest
    thread count."""
    best: dict[float, dict] = {}
    for row in prepares:
        if row["tokenizer"] == "sentencepiece" and "tokens_per_s" in row:
            size = row["corpus_mb"]
            if row["tokens_per_s"] > best.get(size, {}).get("tokens_per_s", 0):
                best[size] = row
    return [
        _verdict(
            "prepare with SentencePiece >= 1M tokens/s on 2 cores",
            row["tokens_per_s"],
            row["tokens_per_s"] >= TARGET_SENTENCEPIECE_TOKENS_PER_S,
            dict(corpus_mb=size, threads=row["threads"]),
        )
        for size, row in sorted(best.items())
    ]


def read_verdicts(reads: list[dict]) -> list[dict]:
    """The slowest first batch and the slowest batches of each prepared
    folder, over the shapes."""
    verdicts = []
    for row in reads:
        shapes = _measured(row)
        if row["pipeline"] != "prepared" or not shapes:
            continue
        where = dict(corpus_mb=row["corpus_mb"], tokenizer=row["tokenizer"])
        first = max(shapes, key=lambda s: s["first_batch_seconds"])
        slowest = min(shapes, key=lambda s: s["tokens_per_s"])
        for target, shape, value, meets in (
            (
                "time to first batch from prepared data <= 10 s",
                first,
                first["first_batch_seconds"],
                first["first_batch_seconds"] <= TARGET_FIRST_BATCH_SECONDS,
            ),
            (
                "batches from shards >= 20M tokens/s",
                slowest,
                slowest["tokens_per_s"],
                slowest["tokens_per_s"] >= TARGET_READ_TOKENS_PER_S,
            ),
        ):
            name = f"{shape['batch_size']}x{shape['sequence_length']}"
            verdicts.append(
                _verdict(target, value, meets, dict(where, shape=name))
            )
    return verdicts


def comparisons(reads: list[dict]) -> list[dict]:
    """Prepared against in-memory, for each size, tokenizer and shape that
    both have: `[prepared, in_memory]` figures."""
    by_key = {}
    for row in reads:
        for shape in _measured(row):
            key = (
                row["corpus_mb"],
                row["tokenizer"],
                f"{shape['batch_size']}x{shape['sequence_length']}",
            )
            by_key.setdefault(key, {})[row["pipeline"]] = shape
    out = []
    for (size, name, shape), pipelines in by_key.items():
        if len(pipelines) < 2:
            continue
        both = [pipelines["prepared"], pipelines["in_memory"]]
        entry = dict(corpus_mb=size, tokenizer=name, shape=shape)
        for field in ("tokens_per_s", "first_batch_seconds", "peak_rss_mb"):
            entry[field] = [figures[field] for figures in both]
        entry["tokens_per_s_ratio"] = round(
            both[0]["tokens_per_s"] / both[1]["tokens_per_s"], 2
        )
        out.append(entry)
    return out
