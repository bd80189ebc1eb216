"""A tflm GPT-2 written in the Hugging Face layout runs in transformers
with the same logits and ids, and imports back unchanged."""

import json
import os

import numpy as np
import pytest

from tflm import errors
from tflm import importers
from tflm.export import huggingface
from tflm.models.causal_lm import CausalLM

transformers = pytest.importorskip(
    "transformers", reason="transformers (the test extra) is not installed"
)
torch = pytest.importorskip("torch", reason="torch is not installed")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好。我们去公园散步吧!",
    "I love pizza 🍕🍕 and cats 🐱! 👍",
]


@pytest.fixture(scope="module")
def exported(hf_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_export")
    lm = CausalLM.from_preset(
        importers.import_checkpoint(hf_dir, str(root / "tflm"))
    )
    out = huggingface.to_huggingface(lm, root / "hf")
    return lm, out


def test_transformers_loads_it_with_the_same_logits_and_ids(exported):
    lm, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    context = lm.backbone.max_sequence_length
    for text in TEXTS:
        ids = lm.tokenizer.tokenize(text).numpy().tolist()
        assert tokenizer(text)["input_ids"] == ids
        assert tokenizer.decode(ids) == text
        ids = ids[:context]
        ours = lm({"token_ids": np.array([ids]),
                   "padding_mask": np.ones([1, len(ids)], bool)})  # fmt: skip
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits.numpy()
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)
    prompt = lm.tokenizer.tokenize(TEXTS[0]).numpy().tolist()[:16]
    with torch.no_grad():
        greedy = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=8, do_sample=False, min_new_tokens=8,
            pad_token_id=lm.tokenizer.eos_id,
        )[0, len(prompt):].tolist()  # fmt: skip
    ours = lm.generate([prompt], 8, min_new_tokens=8, jit_compile=False)
    assert np.asarray(ours)[0].tolist()[: len(greedy)] == greedy


def test_import_of_the_export_is_the_same_model(exported, tmp_path):
    lm, out = exported
    again = CausalLM.from_preset(
        importers.import_checkpoint(out, str(tmp_path / "again"))
    )
    for a, b in zip(lm.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    ignored = ("name", "dtype")
    assert {
        k: v for k, v in again.backbone.get_config().items() if k not in ignored
    } == {k: v for k, v in lm.backbone.get_config().items() if k not in ignored}
    config = json.loads(open(os.path.join(out, "config.json")).read())
    assert config["model_type"] == "gpt2"


def test_what_has_no_counterpart_is_refused(tmp_path):
    from tflm import tokenizers

    lm = CausalLM.from_preset("tiny", norm="rmsnorm")
    lm.tokenizer = tokenizers.ByteTokenizer()
    with pytest.raises(errors.InputError, match="norm is 'rmsnorm'"):
        huggingface.to_huggingface(lm, tmp_path / "b")
    unbiased = CausalLM.from_preset("tiny", qkv_bias=False)
    unbiased.tokenizer = tokenizers.ByteTokenizer()
    with pytest.raises(errors.InputError, match="qkv projection has no bias"):
        huggingface.to_huggingface(unbiased, tmp_path / "b")
    assert not os.path.exists(tmp_path / "b")


def test_cli_writes_the_layout_and_refuses_what_does_not_map(hf_dir, tmp_path):
    import subprocess
    import sys

    model = importers.import_checkpoint(hf_dir, str(tmp_path / "tflm"))

    def tflm(*argv):
        return subprocess.run(
            [sys.executable, "-m", "tflm", "export", *argv],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    done = tflm(model, "--format", "huggingface", "--out", str(tmp_path / "h"))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "h")) == sorted(
        ["config.json", "generation_config.json", "model.safetensors",
         "merges.txt", "tokenizer_config.json", "vocab.json"]
    )  # fmt: skip
    again = tflm(model, "--format", "huggingface", "--out", str(tmp_path / "h"))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    bad = tflm(
        model, "--format", "huggingface", "--weights", "int8",
        "--out", str(tmp_path / "i"),
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--weights int8 does not apply to --format huggingface" in (
        bad.stderr
    )


def test_lora_adapters_are_merged_into_the_export(hf_dir, tmp_path):
    from tflm.models import lora

    lm = CausalLM.from_preset(
        importers.import_checkpoint(hf_dir, str(tmp_path / "tflm"))
    )
    lora.enable_lora(lm, rank=2, targets=("query", "value", "mlp_in"))
    rng = np.random.default_rng(0)
    for variable in lora.adapter_variables(lm).values():
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    out = huggingface.to_huggingface(lm, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = [[5, 17, 42, 99, 3, 250]]
    ours = lm(
        {"token_ids": np.array(ids), "padding_mask": np.ones([1, 6], bool)}
    )
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)
    assert lora.lora_config(lm) is not None  # The model itself is kept.
