"""The model directory: save, load, validate, replace rules, symlinks."""

import json
import os
import time

import numpy as np
import pytest

import tflm
from tflm import errors
from tflm import tokenizers
from tflm.atomic import writer
from tflm.models import CausalLM
from tflm.models import model_dir


@pytest.fixture
def model():
    return CausalLM.from_preset("tiny")


@pytest.fixture
def saved(model, tmp_path):
    out = tmp_path / "model"
    model_dir.save(model, tokenizers.ByteTokenizer(), out)
    return out


def _inputs():
    ids = np.arange(1, 9, dtype="int32")[None]
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def _hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def test_save_and_load_round_trip(model, saved):
    assert sorted(os.listdir(saved)) == [
        "config.json",
        "model.weights.h5",
        "tokenizer",
    ]
    config = json.loads((saved / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["tokenizer"]["type"] == "byte"
    assert config["backbone"]["num_layers"] == 2
    assert model_dir.is_model_dir(saved)
    loaded = model_dir.load_model(CausalLM, saved)
    np.testing.assert_allclose(loaded(_inputs()), model(_inputs()), atol=1e-6)
    assert isinstance(loaded.tokenizer, tokenizers.ByteTokenizer)
    assert _hidden(saved.parent) == []


def test_load_in_another_precision(saved):
    loaded = model_dir.load_model(CausalLM, saved, dtype="mixed_bfloat16")
    assert loaded.backbone.token_embedding.dtype_policy.name == "mixed_bfloat16"


def test_mixed_precision_model_is_saved_as_float32(tmp_path):
    model = CausalLM.from_preset("tiny", dtype="mixed_bfloat16")
    model_dir.save(model, tokenizers.ByteTokenizer(), tmp_path / "m")
    config = model_dir.validate(tmp_path / "m")
    assert config["backbone"]["dtype"] == "float32"


def test_replacing_keeps_other_entries_and_drops_old_state(model, saved):
    (saved / "logs").mkdir()
    (saved / "logs" / "events").write_text("old")
    (saved / "notes.txt").write_text("mine")
    (saved / "train").mkdir()
    (saved / "train" / "state.json").write_text("{}")
    extra = {"train/other.json": "{}", "train/blob.bin": b"\x00"}
    with pytest.raises(errors.InputError, match="--overwrite"):
        model_dir.save(model, tokenizers.ByteTokenizer(), saved, extra=extra)
    assert (saved / "train" / "state.json").read_text() == "{}"
    model_dir.save(
        model, tokenizers.ByteTokenizer(), saved, extra=extra, overwrite=True
    )
    assert (saved / "logs" / "events").read_text() == "old"
    assert (saved / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(saved / "train")) == ["blob.bin", "other.json"]
    assert _hidden(saved.parent) == []


def test_extra_can_be_a_writer_function(model, tmp_path):
    def write(path):
        np.save(path, np.arange(3))

    out = tmp_path / "m"
    model_dir.save(
        model, tokenizers.ByteTokenizer(), out, extra={"train/a.npy": write}
    )
    np.testing.assert_array_equal(np.load(out / "train" / "a.npy"), [0, 1, 2])


def test_a_failed_save_leaves_the_old_directory(model, saved):
    before = (saved / "model.weights.h5").read_bytes()

    def fail(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        model_dir.save(
            model,
            tokenizers.ByteTokenizer(),
            saved,
            extra={"train/x": fail},
            overwrite=True,
        )
    assert (saved / "model.weights.h5").read_bytes() == before
    assert _hidden(saved.parent) == []
    with pytest.raises(errors.InputError, match="inside the model dir"):
        model_dir.save(
            model,
            tokenizers.ByteTokenizer(),
            saved,
            extra={"../x": "y"},
            overwrite=True,
        )
    assert not (saved.parent / "x").exists()


def test_refuses_folders_that_hold_something_else(model, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="no tflm model"):
        model_dir.save(model, tokenizers.ByteTokenizer(), tmp_path)
    assert os.listdir(tmp_path) == ["keep.txt"]
    with pytest.raises(ValueError, match="is a file"):
        model_dir.save(model, tokenizers.ByteTokenizer(), tmp_path / "keep.txt")
    (tmp_path / "empty").mkdir()
    model_dir.save(model, tokenizers.ByteTokenizer(), tmp_path / "empty")
    assert model_dir.is_model_dir(tmp_path / "empty")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: os.remove(d / "config.json"), "config.json is missing"),
        (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
        (
            lambda d: (d / "config.json").write_text("{}"),
            "lacks format_version",
        ),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps(
                    {"format_version": 9, "backbone": {}, "tokenizer": {}}
                )
            ),
            "format_version=9",
        ),
        (lambda d: os.remove(d / "model.weights.h5"), "h5 is missing"),
        (
            lambda d: (d / "model.weights.h5").write_bytes(b"not hdf5"),
            "not a readable weights file",
        ),
        (
            lambda d: os.remove(d / "tokenizer" / "tokenizer.json"),
            "tokenizer.json is missing",
        ),
    ],
)
def test_validate_names_the_bad_file(saved, damage, message):
    damage(saved)
    with pytest.raises(ValueError, match=message):
        model_dir.validate(saved)
    with pytest.raises(ValueError, match=message):
        model_dir.load_model(CausalLM, saved)


def test_truncated_weights_are_detected(saved):
    path = saved / "model.weights.h5"
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 100):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match="model.weights.h5"):
            model_dir.validate(saved)


def test_weights_that_do_not_fit_the_config(saved):
    config = json.loads((saved / "config.json").read_text())
    config["backbone"]["hidden_dim"] = 16
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.InputError, match="does not fit config.json"):
        model_dir.load_model(CausalLM, saved)
    config["backbone"]["hidden_dim"] = 8
    config["backbone"]["num_heads"] = 4  # same sizes, other layout
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.InputError, match="does not fit config.json"):
        model_dir.load_model(CausalLM, saved)


def test_is_model_dir(saved, tmp_path):
    assert model_dir.is_model_dir(saved)
    assert not model_dir.is_model_dir(tmp_path / "missing")
    assert not model_dir.is_model_dir(tmp_path)


def _leftover(saved, kind):
    # The name a save killed by SIGKILL leaves (its pid is dead now).
    pid = os.getpid()
    while True:
        pid += 7919
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            continue
    return saved.parent / f".model.{kind}-{writer._HOST}-{pid}-abc"


def test_recover_restores_a_directory_renamed_aside(saved):
    aside = _leftover(saved, "tflm-old")
    os.rename(saved, aside)
    _leftover(saved, "tflm-tmp").mkdir()
    model_dir.recover(saved)
    assert model_dir.is_model_dir(saved)
    assert _hidden(saved.parent) == []


def test_recover_moves_logs_out_of_an_old_directory(model, saved):
    aside = _leftover(saved, "tflm-old")
    model_dir.save(model, tokenizers.ByteTokenizer(), aside)
    (aside / "logs").mkdir()
    (aside / "logs" / "a").write_text("a")
    (saved / "logs").mkdir()
    (saved / "logs" / "b").write_text("b")
    model_dir.recover(saved)
    assert sorted(os.listdir(saved / "logs")) == ["a", "b"]
    assert _hidden(saved.parent) == []


def test_from_preset_loads_a_directory_with_its_tokenizer(tmp_path):
    model = CausalLM.from_preset("tiny", vocabulary_size=259)
    saved = tmp_path / "model"
    model_dir.save(model, tokenizers.ByteTokenizer(), saved)
    loaded = CausalLM.from_preset(saved)
    np.testing.assert_allclose(loaded(_inputs()), model(_inputs()), atol=1e-6)
    assert isinstance(loaded.tokenizer, tokenizers.ByteTokenizer)
    text = loaded.generate("ab", max_new_tokens=3)
    assert isinstance(text, str)
    assert tflm.load(saved).generate("ab", max_new_tokens=3) == text
    assert tflm.from_preset(str(saved)).generate("ab", max_new_tokens=3) == text


def test_save_to_preset_round_trip_and_refusal(model, tmp_path):
    with pytest.raises(errors.InputError, match="tokenizer"):
        model.save_to_preset(tmp_path / "m")
    model.tokenizer = tokenizers.ByteTokenizer()
    assert model.save_to_preset(tmp_path / "m") == str(tmp_path / "m")
    with pytest.raises(errors.InputError, match="--overwrite"):
        model.save_to_preset(tmp_path / "m")
    model.save_to_preset(tmp_path / "m", overwrite=True)
    loaded = CausalLM.from_preset(tmp_path / "m")
    np.testing.assert_allclose(loaded(_inputs()), model(_inputs()), atol=1e-6)


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(errors.InputError, match="tiny") as info:
        CausalLM.from_preset("no-such-preset")
    assert "Unknown preset" in str(info.value)
    assert "gpt2-124m" in str(info.value)
    with pytest.raises(errors.InputError, match="No such model directory"):
        CausalLM.from_preset(str(tmp_path / "missing"))


def test_symlinked_model_dir_is_written_through(model, saved, tmp_path):
    (saved / "NOTES.md").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(saved)
    path = model_dir.save(
        model, tokenizers.ByteTokenizer(), link, overwrite=True
    )
    assert path == str(saved)
    assert link.is_symlink() and model_dir.is_model_dir(link)
    assert (saved / "NOTES.md").read_text() == "mine"
    assert _hidden(tmp_path) == []
    # Again through the link: nothing hidden was left to break it.
    model_dir.save(model, tokenizers.ByteTokenizer(), link, overwrite=True)
    assert CausalLM.from_preset(link).tokenizer is not None


def test_dangling_symlink_is_refused(model, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(errors.InputError, match="symbolic link"):
        model_dir.save(model, tokenizers.ByteTokenizer(), link)
    assert sorted(os.listdir(tmp_path)) == ["link"]


def test_oversized_config_is_refused_before_building(saved):
    config = json.loads((saved / "config.json").read_text())
    # 2**26 x 8 float32 would be a 2 GB embedding if it were built.
    config["backbone"]["vocabulary_size"] = 2**26
    config["backbone"]["num_layers"] = 3
    (saved / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(errors.InputError, match="vocabulary_size=67108864"):
        CausalLM.from_preset(saved)
    with pytest.raises(errors.InputError, match="num_layers=3"):
        model_dir.validate(saved)
    assert time.perf_counter() - start < 5
