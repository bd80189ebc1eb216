"""The whole road out: a model trained from scratch by `tflm train` (byte
and SentencePiece tokenizers), fine-tuned on chat examples by `tflm
finetune` (full and LoRA), and exported by `tflm export --format
huggingface` runs in transformers with tflm's logits and renders tflm's
prompt ids with `apply_chat_template`; the LoRA fine-tune's adapters load
in PEFT on the exported base."""

import json
import os
import random

import numpy as np
import pytest

from tflm import cli
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import template_render

transformers = pytest.importorskip(
    "transformers", reason="transformers (the test extra) is not installed"
)
torch = pytest.importorskip("torch", reason="torch is not installed")

WORDS = "the king sat on a crown 红楼 梦 café 🙂 and queen 🍕".split()
MESSAGES = [
    {"role": "user", "content": "Where did the king sit? 你好 🙂"},
    {"role": "assistant", "content": "On a crown."},
    {"role": "user", "content": "And the queen?"},
]
TRAIN = ["--steps", "2", "--batch-size", "2", "--sequence-length", "16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choices(WORDS, k=9)) for _ in range(400))
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    with open(root / "chat.jsonl", "w", encoding="utf-8") as f:
        for i in range(40):
            prompt = " ".join(rng.choices(WORDS, k=4))
            f.write(json.dumps({"prompt": prompt, "completion": f"{i} 🙂"}))
            f.write("\n")
    return root


def _tflm(*argv):
    assert cli.main(list(argv)) == 0, argv


@pytest.fixture(scope="module", params=["byte", "sentencepiece:300"])
def trained(request, data, tmp_path_factory):
    """`{"base", "tuned", "lora"}` model directories."""
    root = tmp_path_factory.mktemp("models")
    out = {n: str(root / n) for n in ("base", "tuned", "lora")}
    _tflm(
        "train", "--data", str(data / "corpus.txt"), "--out", out["base"],
        "--preset", "tiny", "--tokenizer", request.param,
        "--validation-fraction", "0", *TRAIN,
    )  # fmt: skip
    task = ["--data", str(data / "chat.jsonl"), "--validation-fraction", "0"]
    _tflm("finetune", out["base"], *task, "--out", out["tuned"], *TRAIN)
    # A large step, so that the adapters move the logits far more than the
    # tolerance below: a lost adapter fails loudly.
    _tflm(
        "finetune", out["base"], *task, "--out", out["lora"], *TRAIN,
        "--lora-rank", "2", "--learning-rate", "0.3", "--warmup-steps", "0",
    )  # fmt: skip
    return out


def _export(directory, out, *flags):
    _tflm("export", directory, "--format", "huggingface", "--out", out, *flags)
    return out


def _logits(lm, ids):
    inputs = {
        "token_ids": np.array([ids]),
        "padding_mask": np.ones([1, len(ids)], bool),
    }
    return np.asarray(lm(inputs))


@pytest.mark.parametrize("name", ["tuned", "lora"])
def test_fine_tunes_run_in_transformers_with_tflm_logits_and_ids(
    trained, tmp_path, name
):
    lm = CausalLM.from_preset(trained[name])
    assert lm.template is not None  # The fine-tune's chat template.
    out = _export(trained[name], str(tmp_path / name))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = template_render.encode_prompt(MESSAGES, lm.tokenizer, lm.template)
    theirs = tokenizer.apply_chat_template(
        MESSAGES, tokenize=True, add_generation_prompt=True
    )
    if hasattr(theirs, "keys"):
        theirs = theirs["input_ids"]
    assert list(theirs) == ids.tolist()
    ids = ids.tolist()[-lm.backbone.max_sequence_length :]
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(_logits(lm, ids), logits, atol=1e-4)


def test_lora_adapters_load_in_peft_on_the_exported_base(trained, tmp_path):
    peft = pytest.importorskip("peft", reason="peft (the test extra)")
    base_out = _export(trained["base"], str(tmp_path / "base"))
    adapters = _export(
        trained["lora"], str(tmp_path / "adapters"), "--adapters-only"
    )
    assert sorted(os.listdir(adapters)) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    hf = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base_out), adapters
    ).eval()
    lm = CausalLM.from_preset(trained["lora"])
    ids = lm.tokenizer.tokenize("the king 红楼 🙂").numpy().tolist()
    ids = ids[: lm.backbone.max_sequence_length]
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits.numpy()
    ours = _logits(lm, ids)
    np.testing.assert_allclose(ours, logits, atol=1e-4)
    base = _logits(CausalLM.from_preset(trained["base"]), ids)
    assert np.abs(ours - base).max() > 0.05  # The adapters matter.
