import collections

import numpy as np
import pytest
import tensorflow as tf

from tflm import data
from tflm import errors
from tflm import tokenizers

BYTE = tokenizers.ByteTokenizer()
SEQ = 8


def _write_corpus(folder, files=2, docs=16):
    folder.mkdir(exist_ok=True)
    for f in range(files):
        paragraphs = [
            f"file {f} doc {d}\nsecond line {'红' * (d % 4)} 🙂 {d * f}"
            for d in range(docs)
        ]
        (folder / f"part{f}.txt").write_text(
            "\n\n".join(paragraphs) + "\n", encoding="utf-8"
        )
    return str(folder)


@pytest.fixture
def corpus(tmp_path):
    return _write_corpus(tmp_path / "corpus")


def _stream(paths, tokenizer, split="all", text_format="paragraph"):
    """tokenize(doc) + [eos] for every document, computed directly."""
    docs = data.read_documents(data.find_files(paths), text_format=text_format)
    out = []
    for doc in docs.as_numpy_iterator():
        keep = {
            "all": True,
            "train": not data.is_validation(doc, 0.1).numpy(),
            "validation": data.is_validation(doc, 0.1).numpy(),
        }[split]
        if keep:
            out += tokenizer.tokenize(doc).numpy().tolist() + [tokenizer.eos_id]
    return out


def _make(paths, tokenizer=BYTE, **kwargs):
    kwargs = {
        "sequence_length": SEQ,
        "batch_size": 4,
        "text_format": "paragraph",
        "split": "all",
        **kwargs,
    }
    return data.make_dataset(paths, tokenizer, **kwargs)


def _windows(dataset):
    """Windows [n, T + 1] rebuilt from (x, y) batches."""
    rows = []
    for x, y, _ in dataset.as_numpy_iterator():
        rows.append(np.concatenate([x["token_ids"], y[:, -1:]], axis=1))
    return np.concatenate(rows)


def test_batches_have_the_documented_structure(corpus):
    x, y, weight = next(iter(_make(corpus)))
    assert set(x) == {"token_ids", "padding_mask"}
    assert x["token_ids"].dtype == tf.int32 and x["token_ids"].shape == (4, SEQ)
    assert x["padding_mask"].dtype == tf.bool
    assert bool(tf.reduce_all(x["padding_mask"]))
    assert y.dtype == tf.int32 and y.shape == (4, SEQ)
    assert weight.dtype == tf.float32
    assert weight.numpy().tolist() == np.ones((4, SEQ)).tolist()


def test_labels_are_inputs_shifted_by_one(corpus):
    for x, y, _ in _make(corpus).take(5).as_numpy_iterator():
        np.testing.assert_array_equal(y[:, :-1], x["token_ids"][:, 1:])


def test_packing_loses_and_adds_no_token(corpus):
    stream = _stream(corpus, BYTE)
    windows = _windows(_make(corpus, shuffle=False, drop_remainder=False))
    window = SEQ + 1
    assert windows.size == len(stream) // window * window
    assert windows.size + len(stream) % window == len(stream)
    assert windows.reshape(-1).tolist() == stream[: windows.size]
    assert (np.array(stream) == BYTE.eos_id).sum() == 2 * 16


def test_pack_windows_on_uneven_chunks():
    chunks = [list(range(n * 10, n * 10 + n)) for n in (0, 3, 7, 1, 0, 12, 5)]
    flat = [t for chunk in chunks for t in chunk]
    ragged = tf.ragged.constant(chunks, dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensor_slices(ragged).map(
        lambda c: c.flat_values if isinstance(c, tf.RaggedTensor) else c
    )
    out = [
        w.tolist() for w in data.pack_windows(dataset, 4).as_numpy_iterator()
    ]
    assert out == [flat[i : i + 4] for i in range(0, len(flat) - 3, 4)]


def test_sentencepiece_pipeline_matches_tokenizing_each_document(corpus):
    text = "\n".join(f"file doc second line 红 🙂 {i}" for i in range(200))
    sp = tokenizers.SentencePieceTokenizer.train(
        texts=[text], vocabulary_size=300
    )
    assert sp.newline_is_boundary  # so the pipeline tokenizes by line
    stream = _stream(corpus, sp, text_format="document")
    windows = _windows(
        _make(corpus, sp, shuffle=False, text_format="document", batch_size=1)
    )
    assert windows.reshape(-1).tolist() == stream[: windows.size]
    assert len(stream) - windows.size < SEQ + 1


def test_same_seed_same_batches_other_seed_other_order(corpus):
    first = _windows(_make(corpus, seed=3, drop_remainder=False))
    again = _windows(_make(corpus, seed=3, drop_remainder=False))
    other = _windows(_make(corpus, seed=4, drop_remainder=False))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert sorted(map(tuple, first)) == sorted(map(tuple, other))


def test_split_is_disjoint_stable_and_complete(corpus, tmp_path):
    files = data.find_files(corpus)
    docs = [d.numpy() for d in data.read_documents(files, text_format="line")]
    flags = data.is_validation(tf.constant(docs), 0.1).numpy()
    assert 0 < flags.sum() < len(docs)
    # The same documents, in another order and another file: same side.
    moved = tmp_path / "moved.txt"
    moved.write_bytes(b"\n".join(reversed(docs)))
    again = data.read_documents([str(moved)], text_format="line")
    again = [d.numpy() for d in again]
    assert sorted(again) == sorted(docs)
    side = dict(zip(docs, flags, strict=True))
    moved_flags = data.is_validation(tf.constant(again), 0.1).numpy()
    assert [side[d] for d in again] == moved_flags.tolist()
    train = _stream(corpus, BYTE, split="train")
    validation = _stream(corpus, BYTE, split="validation")
    assert len(train) + len(validation) == len(_stream(corpus, BYTE))
    windows = _windows(
        _make(corpus, split="validation", split_mode="document", shuffle=False)
    )
    assert windows.reshape(-1).tolist() == validation[: windows.size]


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_workers_see_every_window_once(corpus, shuffle):
    everything = _windows(_make(corpus, shuffle=False, batch_size=1))
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2,
            input_pipeline_id=worker,
            num_replicas_in_sync=2,
        )
        dataset = _make(
            corpus,
            batch_size=2,
            input_context=context,
            shuffle=shuffle,
            drop_remainder=False,
        )
        assert next(iter(dataset))[1].shape[0] == 1  # per-replica batch
        seen.append(collections.Counter(map(tuple, _windows(dataset))))
        if not shuffle:  # worker i gets windows i, i + 2, i + 4, ...
            np.testing.assert_array_equal(
                _windows(dataset), everything[worker::2]
            )
    assert seen[0] + seen[1] == collections.Counter(map(tuple, everything))


def test_auto_shard_policy_is_data(corpus):
    options = _make(corpus).options()
    assert (
        options.experimental_distribute.auto_shard_policy
        == tf.data.experimental.AutoShardPolicy.DATA
    )


def test_repeat_runs_past_one_epoch(corpus):
    epoch = sum(1 for _ in _make(corpus))
    assert (
        sum(1 for _ in _make(corpus, repeat=True).take(epoch + 3)) == epoch + 3
    )


def test_no_python_functions_in_the_graph(corpus):
    graph = _make(corpus)._as_serialized_graph()
    graph_def = tf.compat.v1.GraphDef.FromString(graph.numpy())
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    assert "Scan" in " ".join(ops) or "ScanDataset" in ops
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def test_corpus_shorter_than_a_batch_is_an_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("only a few words")  # 16 bytes + end-of-text
    with pytest.raises(errors.InputError) as caught:
        _make(str(path), text_format="document")
    message = str(caught.value)
    assert message.startswith(
        f"{path} has 17 token(s), but one batch needs 4 window(s) of "
        f"sequence_length + 1 = {SEQ + 1} tokens ({4 * (SEQ + 1)} tokens; "
        "1 window(s) found). Add text, or lower sequence_length or "
        "batch_size"
    )


def test_too_small_validation_split_says_how_to_fix_it(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("one document " * 5)  # 65 characters: 6 held out
    with pytest.raises(errors.InputError) as caught:
        _make(str(path), split="validation", text_format="document")
    message = str(caught.value)
    assert "the 'validation' split of" in message
    assert "has 7 token(s)" in message  # 6 bytes + end-of-text
    assert "raise validation_fraction" in message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sequence_length": 0}, "sequence_length"),
        ({"split": "test"}, "split"),
        ({"split": "validation", "validation_fraction": 0.0}, "fraction"),
        ({"text_format": "sentences"}, "text_format"),
    ],
)
def test_bad_arguments(corpus, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _make(corpus, **kwargs)
