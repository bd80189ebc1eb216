"""`tflm.data.prepared`: windows of prepared shards, shuffled over the whole
corpus, split over input pipelines and resumed exactly."""

import collections
import random

import numpy as np
import prepare_helpers as helpers
import pytest
import tensorflow as tf

from tflm import data
from tflm import errors
from tflm import tokenizers
from tflm.data import prepared

BYTE = tokenizers.ByteTokenizer()
SEQ = 8
WINDOW = SEQ + 1
SHARD_TOKENS = 100  # 11 windows, and 1 token left over


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """45 shards: 4 held out (9, 19, 29, 39), 41 for training (3 groups)."""
    root = tmp_path_factory.mktemp("prepared")
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz \n"
    text = "".join(rng.choice(letters) for _ in range(45 * SHARD_TOKENS - 50))
    (root / "book.txt").write_text(text, encoding="utf-8")
    data.prepare(
        str(root / "book.txt"), BYTE, str(root / "out"),
        validation_fraction=0.1, shard_tokens=SHARD_TOKENS, progress=False,
    )  # fmt: skip
    return str(root / "out")


@pytest.fixture(scope="module")
def loaded(folder):
    return prepared.load(folder, BYTE)


@pytest.fixture(scope="module")
def shard_of(loaded):
    """`{window: shard file}` for every window cut from the shards in order;
    random text makes every window unique."""
    found = {}
    for shard in loaded.shards("all"):
        ids = helpers.shard_ids(
            loaded.directory, {**loaded.manifest, "shards": [shard]}
        )
        cut = ids[: ids.size // WINDOW * WINDOW].reshape(-1, WINDOW)
        found.update({tuple(w): shard["file"] for w in cut.tolist()})
    assert len(found) == prepared.count_windows(loaded, "all", SEQ)
    return found


def _windows(loaded, split="train", take=None, **kwargs):
    dataset = prepared.windows(loaded, split, SEQ, **kwargs)
    if take is not None:
        dataset = dataset.take(take)
    return [tuple(w) for w in dataset.as_numpy_iterator()]


def _epoch(shard_of, loaded, split):
    names = {s["file"] for s in loaded.shards(split)}
    return sorted(w for w, name in shard_of.items() if name in names)


def _batches(dataset, count):
    return [
        np.concatenate([x["token_ids"], y[:, -1:]], axis=1)
        for x, y, _ in dataset.take(count).as_numpy_iterator()
    ]


def test_an_epoch_visits_every_window_once(loaded, shard_of):
    epoch = _epoch(shard_of, loaded, "train")
    expected = sum(s["tokens"] // WINDOW for s in loaded.shards("train"))
    assert (
        len(epoch) == expected == prepared.count_windows(loaded, "train", SEQ)
    )
    first = _windows(loaded, seed=1)
    assert sorted(first) == epoch  # each window once
    assert _windows(loaded, seed=1) == first
    other = _windows(loaded, seed=2)
    assert sorted(other) == epoch and other != first
    two = _windows(loaded, seed=1, repeat=True, take=2 * len(epoch))
    assert two[: len(epoch)] == first
    assert sorted(two[len(epoch) :]) == epoch and two[len(epoch) :] != first
    unshuffled = _windows(loaded, shuffle=False)
    order = [s["file"] for s in loaded.shards("train")]
    assert [order.index(shard_of[w]) for w in unshuffled] == sorted(
        order.index(shard_of[w]) for w in unshuffled
    )


def test_a_batch_draws_from_shards_all_over_the_corpus(folder, shard_of):
    batch = _batches(
        data.make_dataset(folder, BYTE, sequence_length=SEQ, batch_size=8), 1
    )[0]
    assert len({shard_of[tuple(w)] for w in batch.tolist()}) > 2
    # The first group is 16 shards of the whole corpus, not its first 16.
    group = _windows(prepared.load(folder), seed=0, take=16 * 11)
    shards = {shard_of[w] for w in group}
    assert len(shards) == 16
    train = [s["file"] for s in prepared.load(folder).shards("train")]
    assert shards != set(train[:16])
    assert max(train.index(s) for s in shards) >= 32


def test_input_pipelines_read_disjoint_shards_of_one_epoch(loaded, shard_of):
    contexts = [
        tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2
        )
        for i in range(2)
    ]
    seen = [_windows(loaded, seed=3, input_context=c) for c in contexts]
    epoch = _epoch(shard_of, loaded, "train")
    assert seen[0] and seen[1]
    assert sorted(seen[0] + seen[1]) == epoch
    files = [{shard_of[w] for w in windows} for windows in seen]
    assert not files[0] & files[1]
    assert len(files[0] | files[1]) == 41
    # Groups 0-5 are two epochs (3 groups each): pipeline 0 reads groups 0,
    # 2 and 4, pipeline 1 groups 1, 3 and 5.
    both = []
    for context in contexts:
        groups = prepared.window_groups(
            loaded, "train", SEQ, seed=3, repeat=True, input_context=context
        )
        both += [
            tuple(w) for g in groups.take(3).as_numpy_iterator() for w in g
        ]
    assert sorted(both) == sorted(epoch * 2)


def _group_ends(loaded, epochs, **kwargs):
    """Cumulative window counts at the end of each group."""
    groups = prepared.window_groups(loaded, "train", SEQ, **kwargs)
    sizes = [len(g) for g in groups.take(3 * epochs).as_numpy_iterator()]
    return np.cumsum(sizes).tolist()


@pytest.mark.parametrize("pipeline", [None, 1])
def test_skip_windows_resumes_exactly(loaded, pipeline):
    kwargs = dict(seed=4, repeat=True)
    if pipeline is not None:
        kwargs["input_context"] = tf.distribute.InputContext(
            num_input_pipelines=2,
            input_pipeline_id=pipeline,
            num_replicas_in_sync=2,
        )
    once = {**kwargs, "repeat": False}
    per_epoch = len(_windows(loaded, **once))
    full = _windows(loaded, take=3 * per_epoch, **kwargs)
    ends = _group_ends(loaded, 2, **kwargs) if pipeline is None else []
    skips = {1, 7, per_epoch - 1, per_epoch, per_epoch + 5, 2 * per_epoch + 3}
    for end in ends:  # group boundaries, epochs 1 and 2
        skips |= {end - 1, end, end + 1}
    for skip in sorted(s for s in skips if s < 2 * per_epoch):
        resumed = _windows(loaded, take=40, skip_windows=skip, **kwargs)
        assert resumed == full[skip : skip + 40], skip
    # Without repeat, the end of the epoch.
    rest = _windows(loaded, skip_windows=per_epoch - 3, **once)
    assert rest == full[per_epoch - 3 : per_epoch]


def test_skip_batches_resumes_make_dataset_exactly(folder):
    def batches(skip, count):
        dataset = data.make_dataset(
            folder, BYTE, sequence_length=SEQ, batch_size=6, seed=5,
            repeat=True, skip_batches=skip,
        )  # fmt: skip
        return _batches(dataset, count)

    full = batches(0, 160)  # 445 windows an epoch: more than two
    for skip in (1, 29, 30, 75, 76, 151):
        resumed = batches(skip, 4)
        for got, expected in zip(resumed, full[skip : skip + 4], strict=True):
            np.testing.assert_array_equal(got, expected)


def test_the_validation_split_reads_the_held_out_shards(folder, shard_of):
    dataset = data.make_dataset(
        folder, BYTE, sequence_length=SEQ, batch_size=4, split="validation"
    )
    batches = _batches(dataset, -1)
    assert [len(b) for b in batches] == [4] * 11  # 44 windows, all scored
    windows = sorted(tuple(w) for b in batches for w in b.tolist())
    loaded = prepared.load(folder)
    assert windows == _epoch(shard_of, loaded, "validation")
    files = collections.Counter(shard_of[w] for w in windows)
    assert sorted(files) == [f"shard-000{i}9.tokens" for i in range(4)]


@pytest.mark.parametrize(
    "split, batch_size, advice",
    [
        ("validation", 45, "a larger --validation-fraction"),
        ("train", 446, "lower --sequence-length or --batch-size"),
    ],
)
def test_too_little_data_for_one_batch_says_what_to_change(
    folder, split, batch_size, advice
):
    kwargs = dict(sequence_length=SEQ, batch_size=batch_size, split=split)
    if split == "validation":
        kwargs["drop_remainder"] = True
    with pytest.raises(errors.InputError) as raised:
        data.make_dataset(folder, BYTE, **kwargs)
    assert f"but one batch needs {batch_size}" in str(raised.value)
    assert advice in str(raised.value)
    # One window fewer per batch is enough.
    kwargs["batch_size"] = batch_size - 1
    assert _batches(data.make_dataset(folder, BYTE, **kwargs), 1)


def test_a_shard_changed_in_place_is_named_when_read(folder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    shard = copy / prepared.load(str(copy)).shards("train")[5]["file"]
    content = bytearray(shard.read_bytes())
    content[20] = (content[20] + 1) % 128  # Still a valid byte id.
    shard.write_bytes(bytes(content))
    with pytest.raises(errors.InputError) as info:
        with prepared.damaged_shards_refused():
            list(prepared.windows(prepared.load(str(copy)), "train", 8))
    found = str(info.value)
    assert str(shard) in found and "tflm data prepare" in found
    # The original folder reads through.
    original = prepared.load(folder, BYTE)
    assert len(list(prepared.windows(original, "all", 8))) > 100
    with pytest.raises(ValueError, match="other"):
        with prepared.damaged_shards_refused():
            raise ValueError("other")
