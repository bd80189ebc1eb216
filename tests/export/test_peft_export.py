"""A LoRA fine-tune's adapters written for PEFT give the fine-tune's logits.

The base model is written in the Hugging Face layout, the adapters with
`to_peft`; `peft.PeftModel.from_pretrained(base, adapters)` must compute
tflm's LoRA model's logits. The adapters get random, non-zero B's (a fresh
adapter's B is zero and would hide any mapping mistake), and the logits
must differ from the base model's, so a lost adapter fails the test.
"""

import json
import os

import numpy as np
import pytest

from tflm import errors
from tflm import importers
from tflm import tokenizers
from tflm.export import huggingface
from tflm.export import peft as peft_export
from tflm.models import lora
from tflm.models.causal_lm import CausalLM

transformers = pytest.importorskip(
    "transformers", reason="transformers (the test extra) is not installed"
)
torch = pytest.importorskip("torch", reason="torch is not installed")
peft = pytest.importorskip("peft", reason="peft (the test extra) is absent")

import gpt2_files  # noqa: E402

IDS = [[5, 17, 3, 29, 3, 11, 0, 8]]
LLAMA = dict(
    norm="rmsnorm",
    activation="swiglu",
    position_embedding="rotary",
    use_bias=False,
    num_key_value_heads=1,
)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tflm GPT-2 model directory and its base model for transformers."""
    root = tmp_path_factory.mktemp("peft_gpt2")
    gpt2_files.write_checkpoint(str(root / "hf"))
    tflm_dir = importers.import_checkpoint(str(root / "hf"), str(root / "tflm"))
    base = huggingface.to_huggingface(
        CausalLM.from_preset(tflm_dir), root / "b"
    )
    return tflm_dir, base


def _adapt(lm, targets, rank=2, alpha=3.0) -> None:
    lora.enable_lora(lm, rank=rank, alpha=alpha, targets=targets)
    rng = np.random.default_rng(0)
    for variable in lora.adapter_variables(lm).values():
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))


def _logits(lm) -> np.ndarray:
    inputs = {"token_ids": np.array(IDS), "padding_mask": np.ones((1, 8), bool)}
    return np.asarray(lm(inputs))


def _peft_logits(base_dir, adapter_dir) -> tuple[np.ndarray, np.ndarray]:
    """`(base logits, base + adapters logits)` in transformers and PEFT."""
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        plain = base(torch.tensor(IDS)).logits.numpy()
    adapted = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return plain, adapted(torch.tensor(IDS)).logits.numpy()


def _config(adapter_dir) -> dict:
    with open(os.path.join(adapter_dir, peft_export.CONFIG_FILE)) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "targets, r, alpha, patterns",
    [
        (lora.DEFAULT_TARGETS, 4, 6, {}),  # query|value: 2 slices of c_attn
        (lora.TARGETS, 2, 3, {"attn.c_attn": (6, 9)}),
    ],
)
def test_gpt2_adapters_give_the_fine_tunes_logits(
    gpt2, tmp_path, targets, r, alpha, patterns
):
    tflm_dir, base_dir = gpt2
    lm = CausalLM.from_preset(tflm_dir)
    _adapt(lm, targets)
    out = peft_export.to_peft(lm, tmp_path / "adapters")
    assert sorted(os.listdir(out)) == sorted(peft_export.OWNED)
    plain, theirs = _peft_logits(base_dir, out)
    ours = _logits(lm)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.abs(ours - plain).max() > 0.1  # the adapters matter
    config = _config(out)
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"]
    assert (config["r"], config["lora_alpha"]) == (r, alpha)
    assert config["rank_pattern"] == {k: v[0] for k, v in patterns.items()}
    assert config["alpha_pattern"] == {k: v[1] for k, v in patterns.items()}
    expected = {
        "query": "attn.c_attn",
        "value": "attn.c_attn",
        "key": "attn.c_attn",
        "output": "attn.c_proj",
        "mlp_in": "mlp.c_fc",
        "mlp_out": "mlp.c_proj",
    }
    assert config["target_modules"] == sorted({expected[t] for t in targets})


@pytest.mark.parametrize(
    "fused_qkv, targets, modules",
    [
        (True, lora.TARGETS, 7),
        (False, lora.TARGETS, 7),
        (True, ("query", "value", "mlp_in"), 4),  # no k_proj adapter
    ],
)
def test_llama_adapters_give_the_fine_tunes_logits(
    tmp_path, fused_qkv, targets, modules
):
    lm = CausalLM.from_preset(
        "tiny", fused_qkv=fused_qkv, vocabulary_size=259, **LLAMA
    )
    lm.tokenizer = tokenizers.ByteTokenizer()
    base_dir = huggingface.to_huggingface(lm, tmp_path / "base")
    _adapt(lm, targets)
    out = peft_export.to_peft(lm, tmp_path / "adapters", base_model="base")
    plain, theirs = _peft_logits(base_dir, out)
    ours = _logits(lm)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.abs(ours - plain).max() > 0.1
    config = _config(out)
    assert not config["fan_in_fan_out"] and config["rank_pattern"] == {}
    assert (config["r"], config["lora_alpha"]) == (2, 3)
    assert config["base_model_name_or_path"] == "base"
    assert len(config["target_modules"]) == modules
    assert ("mlp.gate_proj" in config["target_modules"]) == (
        "mlp.up_proj" in config["target_modules"]
    )


def test_refused_without_adapters_or_counterpart_or_overwrite(tmp_path):
    plain = CausalLM.from_preset("tiny", **LLAMA)
    with pytest.raises(errors.InputError, match="--adapters-only needs a LoRA"):
        peft_export.to_peft(plain, tmp_path / "a")
    odd = CausalLM.from_preset("tiny", norm="rmsnorm")
    _adapt(odd, lora.DEFAULT_TARGETS)
    with pytest.raises(errors.InputError, match="norm is 'rmsnorm'"):
        peft_export.to_peft(odd, tmp_path / "b")
    assert not os.path.exists(tmp_path / "a")
    assert not os.path.exists(tmp_path / "b")
    _adapt(plain, lora.DEFAULT_TARGETS)
    peft_export.to_peft(plain, tmp_path / "c")
    with pytest.raises(errors.InputError, match="--overwrite"):
        peft_export.to_peft(plain, tmp_path / "c")
    peft_export.to_peft(plain, tmp_path / "c", overwrite=True)


def test_a_config_peft_cannot_describe_is_refused():
    def module(name, rank, fan_in_fan_out=False):
        a, b = np.zeros((rank, 8)), np.zeros((8, rank))
        return peft_export.Module(name, a, b, fan_in_fan_out)

    lora_config = {"rank": 2, "alpha": 2.0}
    ranks = [
        module("model.layers.0.self_attn.q_proj", 2),
        module("model.layers.1.self_attn.q_proj", 4),
    ]
    with pytest.raises(errors.InputError, match="one rank per module"):
        peft_export.adapter_config(ranks, lora_config)
    mixed = [
        module("model.layers.0.self_attn.q_proj", 2),
        module("model.layers.0.self_attn.v_proj", 2, fan_in_fan_out=True),
    ]
    with pytest.raises(errors.InputError, match="fan_in_fan_out"):
        peft_export.adapter_config(mixed, lora_config)
