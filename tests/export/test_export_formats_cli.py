"""`tflm export --format huggingface|gguf` from a model directory: the
adapters of a LoRA fine-tune, a GGUF file, and the flags each format
refuses (one line, exit 2, nothing written)."""

import json
import os

import numpy as np
import pytest

from tflm import cli
from tflm import tokenizers
from tflm.models import lora
from tflm.models import model_dir
from tflm.models.causal_lm import CausalLM

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A GPT-2-block byte model with LoRA adapters, saved whole."""
    lm = CausalLM.from_preset("tiny", vocabulary_size=259)
    lm.tokenizer = tokenizers.ByteTokenizer()
    lora.enable_lora(lm, rank=2)
    rng = np.random.default_rng(0)
    for variable in lora.adapter_variables(lm).values():
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    directory = str(tmp_path_factory.mktemp("lora") / "model")
    model_dir.save(lm, lm.tokenizer, directory)
    return directory


def _run(capsys, *argv):
    code = cli.main(["export", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_adapters_only_writes_peft_files(lora_dir, tmp_path, capsys):
    out = str(tmp_path / "adapters")
    code, stdout, _ = _run(
        capsys, lora_dir, "--format", "huggingface", "--adapters-only",
        "--out", out,
    )  # fmt: skip
    assert code == 0
    assert sorted(os.listdir(out)) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"]
    assert "peft.PeftModel.from_pretrained" in stdout


def test_gguf_file_in_float16(tmp_path, capsys):
    lm = CausalLM.from_preset("tiny", vocabulary_size=300)
    words = "the king queen crown 红楼 梦 café naïve a b c".split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lm.tokenizer = tokenizers.SentencePieceTokenizer.train(
        texts=["\n".join(lines * 20)], vocabulary_size=300
    )
    directory = str(tmp_path / "model")
    model_dir.save(lm, lm.tokenizer, directory)
    out = str(tmp_path / "model.gguf")
    code, stdout, _ = _run(
        capsys, directory, "--format", "gguf", "--weights", "float16",
        "--out", out,
    )  # fmt: skip
    assert code == 0 and "llama-cli -m" in stdout
    reader = gguf.GGUFReader(out)
    kernel = [t for t in reader.tensors if t.name == "blk.0.ffn_up.weight"]
    assert kernel[0].tensor_type == gguf.GGMLQuantizationType.F16


def test_gguf_refuses_a_byte_tokenizer(lora_dir, tmp_path, capsys):
    out = str(tmp_path / "model.gguf")
    code, _, stderr = _run(capsys, lora_dir, "--format", "gguf", "--out", out)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "byte" in lines[0].lower()
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "gguf", "--adapters-only"], "--adapters-only does not"),
        (["--model-type", "llama"], "--model-type does not apply"),
        (["--format", "huggingface", "--weights", "float16"],
         "--weights float16 does not apply to --format huggingface"),
        (["--format", "gguf", "--weights", "int8"], "--weights int8"),
        (["--format", "huggingface", "--xla"], "--xla does not apply"),
        (["--format", "huggingface", "--adapters-only", "--weights",
          "bfloat16"], "--weights bfloat16 does not apply"),
        (["--format", "huggingface", "--model-type", "llama"],
         "norm is 'layernorm'"),
    ],
)  # fmt: skip
def test_flags_a_format_does_not_take_are_refused(
    lora_dir, tmp_path, capsys, argv, message
):
    out = str(tmp_path / "out")
    code, _, stderr = _run(capsys, lora_dir, *argv, "--out", out)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not os.path.exists(out)
