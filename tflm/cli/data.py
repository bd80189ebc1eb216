"""`tflm data prepare`: tokenize a corpus once into token shards."""

from __future__ import annotations

import argparse
import contextlib
import os

from tflm.cli import common

_SENTENCEPIECE = "sentencepiece:"


def add(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="prepare corpora", parents=[common.SHARED]
    )
    commands = parser.add_subparsers(
        dest="data_command", metavar="COMMAND", required=True
    )
    prepare = common.add_command(
        commands,
        "prepare",
        help="tokenize a corpus once into token shards to train from",
        description="Tokenize a corpus once into fixed-size token shards "
        "with a manifest, for corpora larger than memory. Files are read "
        "streaming, tokenized on every core and written shard by shard: "
        "memory does not grow with the corpus. Rerunning the command after "
        "an interruption continues from the last finished shard; over an "
        "unchanged corpus it does nothing. Train with "
        "`tflm train --data DATA_DIR`.",
        example="tflm data prepare --data corpus/ --tokenizer tok/ "
        "--out data/corpus\ntflm train --data data/corpus --preset mini "
        "--out models/corpus",
    )
    prepare.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text files, folders or quoted globs (.txt, .jsonl)",
    )
    prepare.add_argument(
        "--tokenizer",
        default="byte",
        metavar="SPEC",
        help="'byte' (default), a tokenizer directory, a tflm model "
        "directory (its tokenizer, to fine-tune it), or 'sentencepiece:N' "
        "to train an N-id SentencePiece model on --data first",
    )
    prepare.add_argument(
        "--out", required=True, metavar="DIR", help="folder of the shards"
    )
    prepare.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        metavar="X",
        help="share of the shards held out for validation, spread evenly "
        "through the corpus (default: 0.1; 0: none)",
    )
    prepare.add_argument(
        "--shard-tokens",
        type=int,
        default=None,
        metavar="N",
        help="tokens per shard, up to 268435456 (default: 1048576, 2 MB of "
        "uint16 ids); lower it for a small corpus to get validation shards",
    )
    prepare.add_argument(
        "--text-format",
        choices=("document", "paragraph", "line"),
        default="document",
        help="what a document is in .txt files (each ends with the end id)",
    )
    prepare.add_argument(
        "--jsonl-field", default="text", help="text field of .jsonl lines"
    )
    prepare.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out that holds other files than prepared data",
    )
    prepare.set_defaults(func=run_prepare)
    dispatcher = common.add_command(
        commands,
        "dispatcher",
        help="run a tf.data service dispatcher (until Ctrl-C)",
        description="Run a tf.data service dispatcher: it hands the groups "
        "of prepared shards to the workers, and trainers started with "
        "--data-service grpc://HOST:PORT receive the windows they read.",
        example="tflm data dispatcher --port 5050",
    )
    dispatcher.add_argument(
        "--port", type=int, default=5050, help="port to listen on (5050)"
    )
    dispatcher.set_defaults(func=run_dispatcher)
    worker = common.add_command(
        commands,
        "worker",
        help="run a tf.data service worker (until Ctrl-C)",
        description="Run a tf.data service worker: it reads and shuffles "
        "prepared shards for the trainers. It must see the prepared folder "
        "at the same path as the trainers (a shared file system).",
        example="tflm data worker --dispatcher grpc://input-host:5050 "
        "--port 5051 --host input-host",
    )
    worker.add_argument(
        "--dispatcher",
        required=True,
        metavar="ADDRESS",
        help="the dispatcher, grpc://HOST:PORT",
    )
    worker.add_argument(
        "--port", type=int, default=5051, help="port to listen on (5051)"
    )
    worker.add_argument(
        "--host",
        default="localhost",
        help="this machine's name or address as the trainers reach it "
        "(default: localhost, which only trainers on this machine reach)",
    )
    worker.set_defaults(func=run_worker)


def _trained_before(out: str, size: int):
    """A SentencePiece tokenizer of `size` ids that an earlier prepare of
    `out` trained on the same corpus (finished or interrupted), or None."""
    from tflm import tokenizers
    from tflm.data import manifest
    from tflm.data import shards

    found = []
    complete = manifest.read_manifest(out) if os.path.isdir(out) else None
    if complete and not manifest.changed_sources(complete["sources"]):
        found.append(os.path.join(out, manifest.TOKENIZER_DIR))
    found.append(os.path.join(shards.staging_dir(out), manifest.TOKENIZER_DIR))
    for directory in found:
        if tokenizers.is_tokenizer_directory(directory):
            tokenizer = tokenizers.load_tokenizer(directory)
            if (tokenizer.type_name, tokenizer.vocabulary_size) == (
                "sentencepiece",
                size,
            ):
                return tokenizer
    return None


def _tokenizer(spec: str, args: argparse.Namespace):
    from tflm import errors
    from tflm import tokenizers
    from tflm.data import tokenizer_corpus

    if spec == "byte":
        return tokenizers.ByteTokenizer()
    if spec.startswith(_SENTENCEPIECE):
        size = spec[len(_SENTENCEPIECE) :]
        if not size.isdigit():
            raise errors.InputError(
                "--tokenizer 'sentencepiece:N' needs an integer N. "
                f"Received: {spec!r}."
            )
        earlier = _trained_before(os.path.abspath(args.out), int(size))
        if earlier is not None:
            print(
                f"using the SentencePiece tokenizer of {size} ids an earlier "
                f"run trained on this corpus (pass its folder, or delete "
                f"{args.out}, to change it)"
            )
            return earlier
        print(f"training a SentencePiece tokenizer of {size} ids on --data")
        return tokenizer_corpus.train_sentencepiece(
            args.data,
            vocabulary_size=int(size),
            text_format=args.text_format,
            jsonl_field=args.jsonl_field,
        )
    if os.path.isdir(spec):
        inner = os.path.join(spec, "tokenizer")
        if not tokenizers.is_tokenizer_directory(spec) and (
            tokenizers.is_tokenizer_directory(inner)
        ):
            spec = inner  # A model directory: its tokenizer.
        return tokenizers.load_tokenizer(spec)
    raise errors.InputError(
        "--tokenizer must be 'byte', 'sentencepiece:N', a tokenizer "
        f"directory or a model directory. Received: {spec!r} (no such "
        "directory)."
    )


def run_prepare(args: argparse.Namespace) -> int:
    import time

    from tflm import errors
    from tflm.data import shards

    if not 0 <= args.validation_fraction < 1:
        raise errors.InputError(
            "--validation-fraction must be in [0, 1). Received: "
            f"{args.validation_fraction}."
        )
    if args.shard_tokens is not None and args.shard_tokens < 1:
        raise errors.InputError(
            f"--shard-tokens must be positive. Received: {args.shard_tokens}."
        )
    tokenizer = _tokenizer(args.tokenizer, args)
    start = time.perf_counter()
    manifest = shards.prepare(
        args.data,
        tokenizer,
        args.out,
        text_format=args.text_format,
        jsonl_field=args.jsonl_field,
        validation_fraction=args.validation_fraction,
        shard_tokens=args.shard_tokens or shards.DEFAULT_SHARD_TOKENS,
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - start
    splits = manifest["splits"]
    counts = ", ".join(
        f"{side}: {len(splits[side]['shards'])} shard(s), "
        f"{splits[side]['tokens']:,} tokens"
        for side in ("train", "validation")
        if side in splits
    )
    out = os.path.abspath(args.out)
    print(
        f"{manifest['tokens']:,} tokens from {len(manifest['sources'])} "
        f"file(s) ({counts}) in {seconds:.1f} s"
    )
    print(f"written to: {out}")
    print(
        f"train with: tflm train --data {out} --preset PRESET --out MODEL_DIR"
    )
    return 0


@contextlib.contextmanager
def _listening(port: int):
    """A server that cannot listen on `port` (in use, not allowed) is bad
    input, not a bug."""
    import tensorflow as tf

    from tflm import errors

    try:
        yield
    except (tf.errors.OpError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise errors.InputError(
            f"cannot listen on port {port} ({first}). Choose a free --port."
        ) from None


def _check_port(port: int) -> None:
    from tflm import errors

    if not 0 < port < 65536:
        raise errors.InputError(f"--port must be in 1-65535. Received: {port}.")


def run_dispatcher(args: argparse.Namespace) -> int:
    import tensorflow as tf

    _check_port(args.port)
    with _listening(args.port):
        server = tf.data.experimental.service.DispatchServer(
            tf.data.experimental.service.DispatcherConfig(port=args.port)
        )
    print(f"tf.data service dispatcher at {server.target}", flush=True)
    return _serve(server)


def run_worker(args: argparse.Namespace) -> int:
    import tensorflow as tf

    from tflm.data import service

    _check_port(args.port)
    host, port = service.parse_address(args.dispatcher)
    service.check_reachable(args.dispatcher)
    with _listening(args.port):
        server = tf.data.experimental.service.WorkerServer(
            tf.data.experimental.service.WorkerConfig(
                dispatcher_address=f"{host}:{port}",
                worker_address=f"{args.host}:{args.port}",
                port=args.port,
            )
        )
    print(
        f"tf.data service worker at {args.host}:{args.port}, dispatcher "
        f"{args.dispatcher}",
        flush=True,
    )
    return _serve(server)


def _serve(server) -> int:
    """Holds `server` and waits in Python (it runs on its own threads), so
    that Ctrl-C or SIGINT ends the process at once."""
    import time

    while server is not None:
        time.sleep(3600)
    return 0
