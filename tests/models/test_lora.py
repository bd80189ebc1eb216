"""LoRA on a tiny `CausalLM`: training touches the adapters only, merging
changes no output, and model directories keep the adapters apart."""

import json
import os

import h5py
import keras
import numpy as np
import pytest

from tflm import errors
from tflm.layers import lora as lora_layers
from tflm.models import lora
from tflm.models import lora_storage
from tflm.models import model_dir
from tflm.models import weights as weights_lib
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers.byte import ByteTokenizer
from tflm.train import trainer as trainer_lib

CONTEXT = 32
PROMPT = [40, 75, 101, 60, 90]


def _vary(variables, seed=0, scale=1.0):
    """Large random values, so that greedy text is not one repeated id."""
    rng = np.random.default_rng(seed)
    for v in variables:
        if len(v.shape) == 2:
            std = 1.0 if "embedding" in v.path else 1.5 / np.sqrt(v.shape[0])
            v.assign(rng.normal(0, std * scale, v.shape).astype("float32"))
        else:
            v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype("float32"))


def _lm(**overrides):
    keras.utils.set_random_seed(0)
    lm = CausalLM.from_preset(
        "tiny",
        vocabulary_size=259,
        max_sequence_length=CONTEXT,
        **overrides,
    )
    _vary(lm.weights)
    lm.tokenizer = ByteTokenizer()
    return lm


def _lora_lm(targets=lora.DEFAULT_TARGETS, **overrides):
    lm = _lm(**overrides)
    lora.enable_lora(lm, rank=2, alpha=4.0, targets=targets)
    _vary(lm.trainable_variables, seed=1, scale=0.5)
    return lm


def _batch(rows=4, length=8, seed=0):
    ids = np.random.default_rng(seed).integers(0, 259, (rows, length + 1))
    x = {
        "token_ids": ids[:, :-1].astype("int32"),
        "padding_mask": np.ones((rows, length), "int32"),
    }
    return x, ids[:, 1:].astype("int32")


def _base_values(lm):
    return {v.path: v.numpy() for v in lm.variables if "lora" not in v.name}


def _adapter_ids(lm):
    return {id(v) for v in lora.adapter_variables(lm).values()}


def _check_trained_adapters_only(lm, optimizer, base):
    adapters = _adapter_ids(lm)
    assert {id(v) for v in lm.trainable_variables} == adapters
    slots = [v for v in optimizer.variables if len(v.shape) > 0]
    # Adam keeps two slots per trained variable, none for the base.
    assert len(slots) == 2 * len(adapters)
    assert all("lora" in v.path for v in slots)
    for path, value in _base_values(lm).items():
        np.testing.assert_array_equal(value, base[path], err_msg=path)
    b = lora.adapter_weights(lm)["decoder_0/query/lora_b"]
    assert np.abs(b).max() > 0  # the adapters did train


def test_compile_fit_trains_only_the_adapters():
    lm = _lm()
    lora.enable_lora(lm, rank=2)
    base = _base_values(lm)
    lm.compile(learning_rate=1e-2)
    history = lm.fit(*_batch(), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    _check_trained_adapters_only(lm, lm.optimizer, base)


def test_lm_trainer_trains_only_the_adapters():
    lm = _lm()
    lora.enable_lora(lm, rank=2, targets=lora.TARGETS)
    base = _base_values(lm)
    trainer = trainer_lib.LMTrainer(lm, accumulation_steps=2)
    trainer.compile(optimizer=keras.optimizers.AdamW(1e-2))
    history = trainer.fit(*_batch(), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    _check_trained_adapters_only(lm, trainer.optimizer, base)


def _kernel_delta(lm, target_layer="query_key_value"):
    """The merged minus the base kernel of block 0's projection."""
    layer = getattr(lm.backbone.blocks[0].attention, target_layer)
    return (layer.merged_kernel() - layer.kernel).numpy()


@pytest.mark.parametrize(
    "target, num_kv, columns",
    [
        ("query", 2, (0, 8)),
        ("value", 2, (16, 24)),
        ("key", 1, (8, 12)),  # grouped-query: 2 query heads, 1 kv head
        ("value", 1, (12, 16)),
    ],
)
def test_fused_qkv_adapters_touch_only_their_columns(target, num_kv, columns):
    lm = _lora_lm(targets=[target], num_key_value_heads=num_kv)
    delta = _kernel_delta(lm)
    start, end = columns
    assert delta.shape[1] == 8 + 2 * 4 * num_kv
    assert np.abs(delta[:, start:end]).max() > 0
    outside = np.concatenate([delta[:, :start], delta[:, end:]], axis=1)
    np.testing.assert_array_equal(outside, 0.0)


def test_unfused_attention_gets_one_adapter_per_projection():
    lm = _lora_lm(targets=["query", "value"], fused_qkv=False)
    attention = lm.backbone.blocks[0].attention
    assert isinstance(attention.query, lora_layers.LoRADense)
    assert isinstance(attention.value, lora_layers.LoRADense)
    assert not isinstance(attention.key, lora_layers.LoRADense)
    assert np.abs(_kernel_delta(lm, "query")).max() > 0


def _cached_logits(lm, ids):
    """Prefill then one step through `call_with_cache`."""
    batch = np.array([ids], "int32")
    length = batch.shape[1]
    cache = lm.backbone.init_cache(1, CONTEXT)
    mask = np.zeros((1, CONTEXT), "int32")
    mask[:, : length + 1] = 1
    positions = np.arange(length, dtype="int32")[None]
    logits, _, cache = lm.call_with_cache(batch, cache, 0, mask, positions)
    step, _, _ = lm.call_with_cache(
        np.array([[7]], "int32"), cache, length, mask, positions[:, -1:] + 1
    )
    return np.concatenate([logits, step], axis=1)


def test_merged_model_equals_the_lora_model():
    lm = _lora_lm(targets=lora.TARGETS)
    plain = _lm()
    x, _ = _batch(rows=2)
    logits = lm(x).numpy()
    assert np.abs(logits - plain(x).numpy()).max() > 1e-2  # adapters count
    cached = _cached_logits(lm, PROMPT)
    assert np.abs(cached - _cached_logits(plain, PROMPT)).max() > 1e-2
    copy = lora.merged(lm)
    assert lora.lora_config(copy) is None and lora.lora_config(lm) is not None
    assert copy.tokenizer is lm.tokenizer
    # W + BA and Wx + B(Ax) sum in different orders: float32 round-off of
    # logits up to ~5 reaches ~2e-5; the adapters' effect above is > 1e-2.
    np.testing.assert_allclose(copy(x).numpy(), logits, atol=1e-4)
    np.testing.assert_allclose(_cached_logits(copy, PROMPT), cached, atol=1e-4)
    out = lm.generate(PROMPT, 12, jit_compile=False)
    assert len(set(out)) > 3  # not one repeated id
    assert out == copy.generate(PROMPT, 12, jit_compile=False)
    # In place: a plain model, every variable trainable, the same outputs.
    lora.merge_lora(lm)
    assert type(lm.backbone.blocks[0].mlp_out) is keras.layers.Dense
    assert len(lm.trainable_variables) == len(plain.trainable_variables)
    np.testing.assert_allclose(lm(x).numpy(), logits, atol=1e-4)


def _h5_keys(path):
    keys = []
    with h5py.File(path) as f:
        f.visit(keys.append)
    return sorted(keys)


def _size(path):
    return os.path.getsize(path)


def test_model_dir_keeps_adapters_apart_and_round_trips(tmp_path):
    lm = _lora_lm(targets=["query", "value", "mlp_in"])
    directory = model_dir.save(lm, lm.tokenizer, tmp_path / "lora")
    config = model_dir.read_config(directory)
    assert config["lora"] == {
        "rank": 2,
        "alpha": 4.0,
        "targets": ["query", "value", "mlp_in"],
    }
    weights = os.path.join(directory, model_dir.WEIGHTS_FILE)
    adapters = os.path.join(directory, lora_storage.ADAPTERS_FILE)
    # The base file has exactly a plain model's keys and loads into one.
    plain = _lm()
    plain_dir = model_dir.save(plain, plain.tokenizer, tmp_path / "plain")
    plain_weights = os.path.join(plain_dir, model_dir.WEIGHTS_FILE)
    assert _h5_keys(weights) == _h5_keys(plain_weights)
    other = _lm()
    other.load_weights(weights)
    for a, b in zip(other.weights, plain.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # frozen base
    assert _size(adapters) < _size(weights) / 4
    loaded = CausalLM.from_preset(directory)
    assert lora.lora_config(loaded) == config["lora"]
    x, _ = _batch(rows=2)
    np.testing.assert_allclose(loaded(x).numpy(), lm(x).numpy(), atol=1e-6)
    assert {id(v) for v in loaded.trainable_variables} == _adapter_ids(loaded)
    # Saved merged: one plain directory with the same outputs.
    merged_dir = model_dir.save(
        lm, lm.tokenizer, tmp_path / "merged", merge_lora=True
    )
    assert not os.path.exists(
        os.path.join(merged_dir, lora_storage.ADAPTERS_FILE)
    )
    assert "lora" not in model_dir.read_config(merged_dir)
    assert lora.lora_config(lm) is not None  # the model is kept
    merged = CausalLM.from_preset(merged_dir)
    np.testing.assert_allclose(merged(x).numpy(), lm(x).numpy(), atol=1e-5)


def test_a_keras_file_keeps_the_adapters(tmp_path):
    lm = _lora_lm(targets=["query", "mlp_out"])
    path = str(tmp_path / "lora.keras")
    lm.save(path)
    loaded = keras.models.load_model(path)
    assert lora.lora_config(loaded) == lora.lora_config(lm)
    x, _ = _batch(rows=2)
    np.testing.assert_array_equal(loaded(x).numpy(), lm(x).numpy())
    # Still a LoRA model: only the adapters train.
    assert {id(v) for v in loaded.trainable_variables} == _adapter_ids(loaded)


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_reduced_weights_of_a_lora_model_merge_its_adapters(weights):
    lm = _lora_lm()
    x, _ = _batch(rows=2)
    expected = lm(x).numpy()
    reduced = weights_lib.converted(lm, weights)
    assert lora.lora_config(reduced) is None
    assert weights_lib.weights_of(reduced) == weights
    assert lora.lora_config(lm) is not None  # the model is kept
    base = _lm()  # the same base weights, no adapters
    adapters_effect = np.abs(base(x).numpy() - expected).max()
    error = np.abs(reduced(x).numpy() - expected).max()
    assert error < adapters_effect / 5, (error, adapters_effect)


def test_overwriting_with_a_plain_model_drops_the_adapters(tmp_path):
    lm = _lora_lm()
    directory = model_dir.save(lm, lm.tokenizer, tmp_path / "m")
    lora.merge_lora(lm)
    model_dir.save(lm, lm.tokenizer, directory, overwrite=True)
    assert not os.path.exists(
        os.path.join(directory, lora_storage.ADAPTERS_FILE)
    )
    assert lora.lora_config(CausalLM.from_preset(directory)) is None


def test_missing_or_mismatched_adapters_are_input_errors(tmp_path):
    lm = _lora_lm()
    directory = model_dir.save(lm, lm.tokenizer, tmp_path / "m")
    os.remove(os.path.join(directory, lora_storage.ADAPTERS_FILE))
    with pytest.raises(errors.InputError, match="adapters.npz is missing"):
        CausalLM.from_preset(directory)
    weights = lora.adapter_weights(lm)
    weights.pop("decoder_1/value/lora_b")
    with pytest.raises(errors.InputError, match="decoder_1/value/lora_b"):
        lora.load_adapter_weights(lm, weights)
    weights = lora.adapter_weights(lm)
    weights["decoder_0/query/lora_a"] = np.zeros((3, 3), "float32")
    with pytest.raises(errors.InputError, match="shape"):
        lora.load_adapter_weights(lm, weights)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=0), "rank=0"),
        (dict(rank=-2), "rank=-2"),
        (dict(rank=True), "rank=True"),
        (dict(rank=9), "at most 8.*rank=9"),  # hidden 8
        (dict(rank=5, targets=["key"], num_kv=1), "at most 4.*rank=5"),
        (dict(rank=2, targets=["queries"]), "mlp_in.*queries"),
        (dict(rank=2, targets=[]), "targets=\\[\\]"),
        (dict(rank=2, alpha=0.0), "alpha=0.0"),
    ],
)
def test_bad_rank_alpha_or_target_is_an_input_error(kwargs, match):
    kwargs = dict(kwargs)
    num_kv = kwargs.pop("num_kv", None)
    lm = CausalLM.from_preset("tiny", num_key_value_heads=num_kv)
    with pytest.raises(errors.InputError, match=match):
        lora.enable_lora(lm, **kwargs)
    assert lora.lora_config(lm) is None  # nothing half-done
    assert len(lm.trainable_variables) == len(lm.weights)


def test_enable_twice_is_an_input_error():
    lm = CausalLM.from_preset("tiny")
    lora.enable_lora(lm, rank=1)
    with pytest.raises(errors.InputError, match="merge_lora"):
        lora.enable_lora(lm, rank=1)


def _tuned_on_parent(root):
    """A parent model directory, and a LoRA model built on it, saved with
    its base by reference (as `tflm finetune --lora-rank` saves)."""
    parent = _lm()
    parent_dir = model_dir.save(parent, parent.tokenizer, root / "parent")
    lm = model_dir.load_model(CausalLM, parent_dir, weights="float32")
    lora.enable_lora(lm, rank=2, alpha=4.0)
    _vary(lm.trainable_variables, seed=1, scale=0.5)
    record = {"path": parent_dir, "sha256": model_dir.fingerprint(parent_dir)}
    directory = model_dir.save(
        lm,
        lm.tokenizer,
        root / "tuned",
        metadata={"parent": {**record, "kind": "model_dir"}},
        base_from_parent=True,
    )
    return lm, parent_dir, directory


def test_a_fine_tune_keeps_its_base_by_reference(tmp_path):
    """Before, a LoRA fine-tune's directory carried the whole base again.
    (A bfloat16 parent works the same, cast up; slower to test.)"""
    lm, parent_dir, directory = _tuned_on_parent(tmp_path)
    files = sorted(os.listdir(directory))
    assert files == ["adapters.npz", "config.json", "tokenizer"]
    assert model_dir.read_config(directory)["lora"]["base"] == "parent"
    loaded = CausalLM.from_preset(directory)
    assert lora.lora_config(loaded) == lora.lora_config(lm)
    x, _ = _batch(rows=2)
    np.testing.assert_array_equal(loaded(x).numpy(), lm(x).numpy())
    # Merged, it is a plain model with every weight of its own.
    merged = model_dir.save(
        loaded, lm.tokenizer, tmp_path / "m", merge_lora=True
    )
    plain = CausalLM.from_preset(merged)
    assert lora.lora_config(plain) is None
    np.testing.assert_allclose(plain(x).numpy(), lm(x).numpy(), atol=1e-5)


def test_a_moved_or_changed_parent_is_named_in_one_line(tmp_path):
    _, parent_dir, directory = _tuned_on_parent(tmp_path)
    moved = str(tmp_path / "elsewhere")
    os.rename(parent_dir, moved)
    with pytest.raises(errors.InputError) as caught:
        CausalLM.from_preset(directory)
    message = str(caught.value)
    assert "\n" not in message and f"parent model {parent_dir}" in message
    assert "missing (moved or deleted)" in message
    os.rename(moved, parent_dir)
    other = _lm(dropout=0.0)
    _vary(other.weights, seed=5)
    model_dir.save(other, other.tokenizer, parent_dir, overwrite=True)
    with pytest.raises(errors.InputError, match="has changed since"):
        CausalLM.from_preset(directory)


def _write(path, content: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)


def test_files_added_beside_the_parent_model_leave_its_children(tmp_path):
    # Before, the parent's fingerprint covered every file in its folder: a
    # note or `tflm export P --out P/serving` made each child refuse to load.
    lm, parent_dir, directory = _tuned_on_parent(tmp_path)
    _write(os.path.join(parent_dir, "NOTES.md"), "my notes")
    _write(os.path.join(parent_dir, "serving", "1", "saved_model.pb"), "x")
    config_path = os.path.join(parent_dir, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    _write(config_path, json.dumps({**config, "tflm_version": "9.9"}))
    loaded = CausalLM.from_preset(directory)
    x, _ = _batch(rows=2)
    np.testing.assert_array_equal(loaded(x).numpy(), lm(x).numpy())
    # The model's own files still count: its tokenizer, for one.
    _write(os.path.join(parent_dir, "tokenizer", "extra.txt"), "x")
    with pytest.raises(errors.InputError, match="has changed since"):
        CausalLM.from_preset(directory)


def test_loading_reads_again_only_the_parent_files_that_changed(tmp_path):
    _, parent_dir, _ = _tuned_on_parent(tmp_path)
    record = model_dir.fingerprint_record(parent_dir)
    name = model_dir.WEIGHTS_FILE
    size, mtime, sha256 = record["files"][name]
    stale = {"files": {**record["files"], name: [size, mtime, "0" * 64]}}
    # Size and time as recorded: the recorded SHA-256 is used, unread.
    reused = model_dir.fingerprint_record(parent_dir, known=stale)
    assert reused["files"][name][2] == "0" * 64
    assert reused["sha256"] != record["sha256"]
    # Another time: the file is read again.
    os.utime(os.path.join(parent_dir, name), ns=(mtime + 1, mtime + 1))
    again = model_dir.fingerprint_record(parent_dir, known=stale)
    assert again["files"][name] == [size, mtime + 1, sha256]
    assert again["sha256"] == record["sha256"]
