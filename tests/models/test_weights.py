"""bfloat16 and int8 inference weights: logits, model directories, errors."""

import json

import h5py
import numpy as np
import pytest

from tflm import cli
from tflm import errors
from tflm.models import CausalLM
from tflm.models import model_dir
from tflm.models import weights as weights_lib
from tflm.tokenizers import ByteTokenizer

# Tiny shapes of each preset family's block.
TINY = dict(vocabulary_size=64, hidden_dim=32, intermediate_dim=64)
FAMILIES = {
    "gpt2": TINY,
    "llama": dict(
        TINY,
        norm="rmsnorm",
        activation="swiglu",
        position_embedding="rotary",
        use_bias=False,
        fused_qkv=False,
        tie_embeddings=False,
        num_key_value_heads=1,
    ),
}
KERNEL = "layers/backbone/layers/decoder_block/mlp_in/vars/0"
# Max |logits - float32 logits| over the float32 logits' standard deviation.
TOLERANCE = {"bfloat16": 0.1, "int8": 0.15}


def _model(family: str) -> CausalLM:
    lm = CausalLM.from_preset("tiny", **FAMILIES[family])
    rng = np.random.default_rng(0)
    for v in lm.weights:  # weights large enough that logits spread out
        if len(v.shape) == 2:
            v.assign(rng.normal(0, 1 / np.sqrt(v.shape[0]), v.shape))
    return lm


def _inputs():
    ids = np.random.default_rng(1).integers(0, 64, (2, 12)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_logits_stay_close_to_float32(family, weights):
    lm = _model(family)
    x = _inputs()
    reference = lm(x).numpy()
    weights_lib.convert_weights(lm, weights)
    logits = lm(x)
    assert logits.dtype == "float32"
    error = np.abs(logits.numpy() - reference).max() / reference.std()
    assert 0 < error < TOLERANCE[weights]
    assert weights_lib.weights_of(lm) == weights
    kernel = lm.backbone.blocks[0].mlp_out.kernel
    assert kernel.dtype == weights


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_cached_decoding_matches_the_full_pass(weights):
    lm = weights_lib.convert_weights(_model("llama"), weights)
    x = _inputs()
    full = lm(x).numpy()
    cache = lm.backbone.init_cache(2, 12)
    ids, mask = x["token_ids"], x["padding_mask"]
    steps = []
    for t in range(12):
        logits, _, cache = lm.call_with_cache(
            ids[:, t : t + 1], cache, t, mask, np.full((2, 1), t, "int32")
        )
        steps.append(logits.numpy())
    # bfloat16 rounds differently along the two paths.
    error = np.abs(np.concatenate(steps, 1) - full).max() / full.std()
    assert error < TOLERANCE[weights]


def test_float32_is_a_no_op_and_a_copy_keeps_the_original():
    lm = _model("gpt2")
    paths = [v.path for v in lm.weights]
    assert weights_lib.convert_weights(lm, "float32") is lm
    assert [v.path for v in lm.weights] == paths
    copy = weights_lib.converted(lm, "int8")
    assert weights_lib.weights_of(lm) == "float32"
    assert weights_lib.weights_of(copy) == "int8"


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_model_directory_stores_converted_weights(tmp_path, weights):
    lm = weights_lib.convert_weights(_model("gpt2"), weights)
    float_dir, path = tmp_path / "float", tmp_path / weights
    model_dir.save(_model("gpt2"), ByteTokenizer(), float_dir)
    model_dir.save(lm, ByteTokenizer(), path)
    with open(path / model_dir.CONFIG_FILE) as f:
        assert json.load(f)["weights"] == weights
    with open(float_dir / model_dir.CONFIG_FILE) as f:
        assert "weights" not in json.load(f)
    loaded = CausalLM.from_preset(path)
    assert weights_lib.weights_of(loaded) == weights
    x = _inputs()
    np.testing.assert_array_equal(loaded(x).numpy(), lm(x).numpy())
    with h5py.File(path / model_dir.WEIGHTS_FILE) as f:
        kernel = f[KERNEL]
        assert kernel.dtype.itemsize == (2 if weights == "bfloat16" else 1)


def test_bad_weights_value_is_a_clear_error():
    with pytest.raises(errors.InputError, match="Received: weights='fp8'"):
        weights_lib.convert_weights(_model("gpt2"), "fp8")
    lm = weights_lib.convert_weights(_model("gpt2"), "int8")
    with pytest.raises(errors.InputError, match="already int8"):
        weights_lib.convert_weights(lm, "bfloat16")


def test_cli_rejects_a_bad_weights_flag(tmp_path, capsys):
    path = str(tmp_path / "model")
    model_dir.save(_model("gpt2"), ByteTokenizer(), path)
    for command in (["generate", path, "--prompt", "a"], ["export", path]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(
                [*command, "--out", "x"][
                    : len(command) + 2 * (command[0] == "export")
                ]
                + ["--weights", "fp8"]
            )
        assert exit_info.value.code == 2
        assert "invalid choice: 'fp8'" in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_a_converted_directory_loads_as_float32(tmp_path, weights):
    original = _model("gpt2")
    path = tmp_path / weights
    model_dir.save(
        weights_lib.converted(original, weights), ByteTokenizer(), path
    )
    loaded = model_dir.load_model(CausalLM, path, weights="float32")
    assert weights_lib.weights_of(loaded) == "float32"
    assert all(v.dtype == "float32" for v in loaded.weights)
    kernel = loaded.backbone.blocks[0].mlp_in.kernel.numpy()
    want = original.backbone.blocks[0].mlp_in.kernel.numpy()
    if weights == "bfloat16":
        np.testing.assert_array_equal(kernel, want.astype("bfloat16"))
    else:
        # Within half a step of the per-column absmax grid.
        step = np.abs(want).max(axis=0) / 127
        assert np.all(np.abs(kernel - want) <= step / 2 + 1e-7)
        assert not np.array_equal(kernel, want)
    embedding = loaded.backbone.token_embedding.embeddings.numpy()
    want = original.backbone.token_embedding.embeddings.numpy()
    step = np.abs(want).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(embedding - want) <= step / 2 + 1e-7)
    # Converting it back stores what a direct conversion stores.
    again = weights_lib.converted(loaded, weights)
    x = _inputs()
    np.testing.assert_allclose(
        again(x).numpy(),
        weights_lib.converted(original, weights)(x).numpy(),
        atol=1e-5,
    )


def test_converted_copies_keep_the_template_and_end_ids():
    """An export converts a copy: it must stop where the model stops (an
    imported Llama 3's `<|eot_id|>`) and render the same template."""
    from tflm.models import CausalLM
    from tflm.models import weights as weights_lib
    from tflm.tokenizers import templates

    lm = CausalLM.from_preset("tiny", vocabulary_size=259)
    lm.eos_ids, lm.template = (7, 9), dict(templates.TEMPLATE)
    for weights in ("bfloat16", "int8"):
        copy = weights_lib.converted(lm, weights)
        assert copy is not lm
        assert copy.eos_ids == (7, 9) and copy.template == lm.template
