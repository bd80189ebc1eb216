"""Models made in tflm (not imported) leave it in the Hugging Face layout:
a byte-tokenizer GPT-2-block model and a SentencePiece Llama-style model,
each with tflm's own chat template, run in transformers with tflm's
logits, greedy tokens, tokenizer ids and chat-template ids, and come back
through `tflm import` unchanged.
"""

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tflm import importers
from tflm import tokenizers
from tflm.export import huggingface
from tflm.models import backbone as backbone_lib
from tflm.models import model_dir
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import template_render
from tflm.tokenizers import templates

transformers = pytest.importorskip(
    "transformers", reason="transformers (the test extra) is not installed"
)
torch = pytest.importorskip("torch", reason="torch is not installed")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好。我们去公园散步吧!",
    "I love pizza 🍕🍕 and cats 🐱! Two  spaces,\ttabs\nand lines.",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hello there, 你好 👋"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ],
]
WORDS = "the king queen crown 红楼 梦 café naïve 🙂 🍕 pizza a  b\tc".split(" ")


def _sentencepiece():
    rng = random.Random(0)
    lines = [" ".join(rng.choices(WORDS, k=8)) for _ in range(300)]
    return tokenizers.SentencePieceTokenizer.train(
        texts=["\n".join(lines + TEXTS)], vocabulary_size=320
    )


def _model(kind):
    """A random-weight model of `kind` with its tokenizer and tflm's
    template, as training from scratch leaves one."""
    if kind == "gpt2-byte":
        tokenizer = tokenizers.ByteTokenizer()
        args = dict(max_sequence_length=128)
    else:
        tokenizer = _sentencepiece()
        args = dict(
            max_sequence_length=128, norm="rmsnorm", activation="swiglu",
            position_embedding="rotary", use_bias=False, fused_qkv=True,
            num_key_value_heads=2, tie_embeddings=False,
            layer_norm_epsilon=1e-6,
        )  # fmt: skip
    lm = CausalLM(
        backbone_lib.Backbone(
            vocabulary_size=tokenizer.vocabulary_size, num_layers=2,
            num_heads=4, hidden_dim=32, intermediate_dim=64, **args,
        )
    )  # fmt: skip
    rng = np.random.default_rng(1)
    for variable in lm.weights:
        norm = "norm" in variable.path
        value = rng.normal(1.0 if norm else 0.0, 0.1 if norm else 0.3,
                           variable.shape)  # fmt: skip
        variable.assign(value.astype("float32"))
    lm.tokenizer = tokenizer
    lm.template = templates.record(templates.NAME)
    return lm


@pytest.fixture(scope="module", params=["gpt2-byte", "llama-sentencepiece"])
def case(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    lm = _model(request.param)
    directory = str(root / "tflm")
    model_dir.save(
        lm, lm.tokenizer, directory, metadata={"template": lm.template}
    )
    lm = CausalLM.from_preset(directory)
    out = str(root / "hf")
    done = subprocess.run(
        [sys.executable, "-m", "tflm", "export", directory,
         "--format", "huggingface", "--out", out],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return lm, out


def test_transformers_runs_it_with_tflm_logits_and_greedy_tokens(case):
    lm, out = case
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    for text in TEXTS:
        ids = lm.tokenizer.tokenize(text).numpy().tolist()
        inputs = {
            "token_ids": np.array([ids]),
            "padding_mask": np.ones([1, len(ids)], bool),
        }
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits.numpy()
        np.testing.assert_allclose(np.asarray(lm(inputs)), theirs, atol=1e-4)
    prompt = lm.tokenizer.tokenize(TEXTS[0]).numpy().tolist()[:12]
    with torch.no_grad():
        greedy = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=8, min_new_tokens=8, do_sample=False,
            pad_token_id=lm.tokenizer.pad_id,
        )[0, len(prompt):].tolist()  # fmt: skip
    ours = lm.generate([prompt], 8, min_new_tokens=8, jit_compile=False)
    assert np.asarray(ours)[0].tolist()[: len(greedy)] == greedy


def test_tokenizer_and_chat_template_give_tflm_ids(case):
    lm, out = case
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        ids = lm.tokenizer.tokenize(text).numpy().tolist()
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        assert tokenizer.decode(ids) == text
    assert tokenizer.bos_token_id == lm.tokenizer.bos_id
    assert tokenizer.eos_token_id == lm.tokenizer.eos_id
    for messages in CONVERSATIONS:
        theirs = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True
        )
        if hasattr(theirs, "keys"):
            theirs = theirs["input_ids"]
        ours = template_render.encode_prompt(messages, lm.tokenizer)
        assert list(theirs) == ours.tolist(), messages


def _imported(directory, into):
    return CausalLM.from_preset(importers.import_checkpoint(directory, into))


def _config(lm, ignored=("name",)):
    config = lm.backbone.get_config()
    return {k: v for k, v in config.items() if k not in ignored}


def test_import_of_the_export_is_the_same_model(case, tmp_path):
    """The export comes back as the same model. tflm's own Llama-style
    presets fuse q|k|v, which comes back as three projections (the
    logits are the same); from there, export and import are the
    identity."""
    lm, out = case
    again = _imported(out, str(tmp_path / "again"))
    fused = lm.backbone.get_config()["fused_qkv"] and (
        lm.backbone.get_config()["norm"] == "rmsnorm"
    )
    ignored = ("name", "fused_qkv") if fused else ("name",)
    assert _config(again, ignored) == _config(lm, ignored)
    ids = lm.tokenizer.tokenize(TEXTS[2]).numpy()[None]
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    np.testing.assert_allclose(again(inputs), lm(inputs), atol=1e-5)
    assert again.template == lm.template
    for text in TEXTS:
        np.testing.assert_array_equal(
            again.tokenizer.tokenize(text), lm.tokenizer.tokenize(text)
        )
    assert type(again.tokenizer) is type(lm.tokenizer)
    if not fused:
        for a, b in zip(lm.get_weights(), again.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    twice = _imported(
        huggingface.to_huggingface(again, tmp_path / "hf2"),
        str(tmp_path / "twice"),
    )
    assert _config(twice) == _config(again)
    for a, b in zip(again.get_weights(), twice.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_generation_config_names_the_end_ids(case):
    lm, out = case
    with open(os.path.join(out, "generation_config.json")) as f:
        generation = json.load(f)
    assert generation["eos_token_id"] == lm.tokenizer.eos_id
    assert generation["bos_token_id"] == lm.tokenizer.bos_id
    again = transformers.GenerationConfig.from_pretrained(out)
    assert again.eos_token_id == lm.tokenizer.eos_id


def test_a_full_disk_leaves_nothing_half_written(case, tmp_path):
    """On a small real file system, the export that does not fit is one
    line with exit 2, and the earlier export there is kept whole."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small file system")
    lm, out = case
    directory = str(tmp_path / "tflm")
    model_dir.save(lm, lm.tokenizer, directory)
    size = sum(
        os.path.getsize(os.path.join(out, name)) for name in os.listdir(out)
    )
    script = (
        "import subprocess, sys\n"
        "disk, model, size = sys.argv[1], sys.argv[2], sys.argv[3]\n"
        "mount = ['mount', '-t', 'tmpfs', '-o', f'size={size}k', 'tmpfs',"
        " disk]\n"
        "if subprocess.run(mount).returncode: sys.exit(77)\n"
        "run = lambda *a: subprocess.run([sys.executable, '-m', 'tflm',"
        " 'export', model, '--format', 'huggingface', '--out',"
        " disk + '/hf', *a], capture_output=True, text=True)\n"
        "first = run()\n"
        "assert first.returncode == 0, first.stderr\n"
        "before = sorted(__import__('os').listdir(disk + '/hf'))\n"
        "second = run('--overwrite')\n"
        "import json, os\n"
        "print(json.dumps(dict(code=second.returncode, stderr=second.stderr,"
        " kept=before == sorted(os.listdir(disk + '/hf')),"
        " entries=sorted(os.listdir(disk)))))\n"
    )
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for one export and a part of a second.
    kilobytes = int(size * 1.5) // 1024 + 64
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount",
         sys.executable, "-c", script, str(disk), directory, str(kilobytes)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode == 77 or "unshare:" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 2, result["stderr"]
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and "space" in lines[0].lower(), lines
    assert result["kept"]
    assert result["entries"] == ["hf"]  # No temporary folder is left.
