"""Llama, Qwen2 and Mistral models leave tflm in the Hugging Face layout:
transformers runs the export with tflm's logits, greedy tokens, tokenizer
ids and chat-template ids, and importing it back is the identity.

The checkpoints are transformers' own random models (`llama_files`),
imported by `tflm import` and exported by `tflm export --format
huggingface`; the reference is transformers reading the export.
"""

import json
import os

import llama_files
import ml_dtypes
import numpy as np
import pytest

from tflm import cli
from tflm import errors
from tflm import importers
from tflm.export import huggingface
from tflm.models import backbone as backbone_lib
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import template_render

transformers = pytest.importorskip(
    "transformers", reason="transformers (the test extra) is not installed"
)
torch = pytest.importorskip("torch", reason="torch is not installed")
safetensors_torch = pytest.importorskip("safetensors.torch")

FAMILIES = list(llama_files.CHECKPOINTS)
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好。我们去公园散步吧!",
    "I love pizza 🍕🍕 and cats 🐱!  Two  spaces,\ttabs\nand lines.",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hello there, 你好 👋"}],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ],
]


class Exported:
    def __init__(self, source, model_dir, lm, out):
        self.source, self.model_dir, self.lm, self.out = (
            source, model_dir, lm, out,
        )  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each family imported into tflm and exported back by the CLI."""
    sentencepiece = llama_files.sentencepiece_model()
    out = {}
    for name in FAMILIES:
        root = tmp_path_factory.mktemp(f"export_{name}")
        source = str(root / "hf")
        llama_files.write_checkpoint(
            source, name, sentencepiece_bytes=sentencepiece
        )
        model_dir = importers.import_checkpoint(source, str(root / "tflm"))
        target = str(root / "out")
        argv = ["export", model_dir, "--format", "huggingface"]
        assert cli.main([*argv, "--out", target]) == 0
        out[name] = Exported(
            source, model_dir, CausalLM.from_preset(model_dir), target
        )
    return out


def _config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def _logits(lm, ids):
    inputs = {
        "token_ids": np.array([ids]),
        "padding_mask": np.ones([1, len(ids)], bool),
    }
    return np.asarray(lm(inputs))


@pytest.mark.parametrize("name", FAMILIES)
def test_transformers_runs_the_export_with_tflm_logits(exported, name):
    case = exported[name]
    assert _config(case.out)["model_type"] == _config(case.source)["model_type"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(case.out).eval()
    ids = [5, 9, 40, 33, 7, 100, 12, 3, 250, 17]
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(_logits(case.lm, ids), theirs, atol=1e-4)
    prompt = ids[:6]
    with torch.no_grad():
        greedy = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=8, min_new_tokens=8, do_sample=False,
            pad_token_id=0,
        )[0, len(prompt):].tolist()  # fmt: skip
    ours = case.lm.generate([prompt], 8, min_new_tokens=8, jit_compile=False)
    assert np.asarray(ours)[0].tolist()[: len(greedy)] == greedy


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenizer_and_chat_template_give_tflm_ids(exported, name):
    case = exported[name]
    tokenizer = transformers.AutoTokenizer.from_pretrained(case.out)
    for text in TEXTS:
        ids = case.lm.tokenizer.tokenize(text).numpy().tolist()
        plain = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert plain == ids, text
        # With its special tokens: the start id where tflm adds it.
        start = [case.lm.tokenizer.bos_id] if case.lm.tokenizer.add_bos else []
        assert tokenizer(text)["input_ids"] == start + ids, text
        assert tokenizer.decode(ids) == text
    assert os.path.isfile(os.path.join(case.out, "chat_template.jinja"))
    for messages in CONVERSATIONS:
        theirs = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True
        )
        if hasattr(theirs, "keys"):
            theirs = theirs["input_ids"]
        ours = template_render.encode_prompt(
            messages, case.lm.tokenizer, case.lm.template
        )
        assert list(theirs) == ours.tolist(), messages


@pytest.mark.parametrize("name", FAMILIES)
def test_import_of_the_export_is_the_same_model(exported, name, tmp_path):
    case = exported[name]
    again = CausalLM.from_preset(
        importers.import_checkpoint(case.out, str(tmp_path / "again"))
    )
    for a, b in zip(case.lm.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    ours, theirs = (
        {k: v for k, v in m.backbone.get_config().items() if k != "name"}
        for m in (case.lm, again)
    )
    assert theirs == ours
    assert again.template == case.lm.template
    assert tuple(again.eos_ids) == tuple(case.lm.eos_ids)
    for text in TEXTS:
        np.testing.assert_array_equal(
            again.tokenizer.tokenize(text), case.lm.tokenizer.tokenize(text)
        )


def test_bfloat16_shards_and_an_earlier_export_superseded(exported, tmp_path):
    case = exported["llama"]
    out = tmp_path / "hf"
    huggingface.to_huggingface(
        case.lm, out, weights="bfloat16", max_shard_bytes=64 * 1024
    )
    files = sorted(os.listdir(out))
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors" not in files
    with open(out / "model.safetensors.index.json") as f:
        index = json.load(f)
    assert sorted(set(index["weight_map"].values())) == shards
    config = _config(out)
    assert config["torch_dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.bfloat16
    embedding = case.lm.backbone.token_embedding.embeddings.numpy()
    expected = embedding.astype(ml_dtypes.bfloat16).astype(np.float32)
    ours = hf.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(ours, expected)
    # One file again: the shards and the index of the first export go.
    huggingface.to_huggingface(case.lm, out, overwrite=True)
    files = sorted(os.listdir(out))
    assert "model.safetensors" in files
    assert not [f for f in files if f.startswith("model-")]
    assert "model.safetensors.index.json" not in files


def test_the_model_type_comes_from_the_architecture_or_the_record(
    exported, tmp_path
):
    # Mistral is a bias-free Llama: only the record tells them apart.
    mistral = exported["mistral"]
    config = _config(mistral.out)
    assert config["model_type"] == "mistral"
    assert config["sliding_window"] == config["max_position_embeddings"]
    assert mistral.lm.hf_model_type == "mistral"
    out = huggingface.to_huggingface(mistral.lm, tmp_path / "m")
    assert _config(out)["model_type"] == "mistral"
    out = huggingface.to_huggingface(
        mistral.lm, tmp_path / "plain", model_type="llama"
    )
    assert _config(out)["model_type"] == "llama"
    # Qwen2's biases on q/k/v only are Qwen2's alone.
    qwen = huggingface.to_huggingface(exported["qwen2"].lm, tmp_path / "q")
    assert _config(qwen)["model_type"] == "qwen2"
    with pytest.raises(errors.InputError, match="no llama counterpart"):
        huggingface.to_huggingface(
            exported["qwen2"].lm, tmp_path / "x", model_type="llama"
        )
    assert not os.path.exists(tmp_path / "x")


def _random(lm, seed=0):
    rng = np.random.default_rng(seed)
    for variable in lm.weights:
        scale = 0.1 if "norm" in variable.path else 0.3
        base = 1.0 if "norm" in variable.path else 0.0
        variable.assign(
            rng.normal(base, scale, variable.shape).astype("float32")
        )
    return lm


def test_tflm_llama_presets_with_fused_qkv_and_rope_scaling(tmp_path):
    """A Llama-style model trained in tflm (fused q|k|v, biases, linear
    rope scaling) exports with transformers' logits."""
    from tflm import tokenizers

    linear = {"type": "linear", "factor": 2.0}
    for use_bias, scaling in ((False, None), (True, linear)):
        lm = _random(
            CausalLM(
                backbone_lib.Backbone(
                    vocabulary_size=259, num_layers=2, num_heads=4,
                    num_key_value_heads=2, hidden_dim=32,
                    intermediate_dim=48, max_sequence_length=64,
                    norm="rmsnorm", activation="swiglu",
                    position_embedding="rotary", use_bias=use_bias,
                    fused_qkv=True, tie_embeddings=False,
                    layer_norm_epsilon=1e-6, rope_scaling=scaling,
                )
            )
        )  # fmt: skip
        lm.tokenizer = tokenizers.ByteTokenizer()
        out = huggingface.to_huggingface(lm, tmp_path / f"b{use_bias}")
        assert _config(out)["attention_bias"] is use_bias
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        ids = lm.tokenizer.tokenize(TEXTS[1]).numpy().tolist()
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits.numpy()
        np.testing.assert_allclose(_logits(lm, ids), theirs, atol=1e-4)


def test_what_has_no_counterpart_is_refused(tmp_path):
    from tflm import tokenizers
    from tflm.models import weights

    cases = {
        "norm is 'layernorm'": dict(norm="layernorm", activation="swiglu"),
        "activation is 'gelu'": dict(norm="rmsnorm", activation="gelu"),
    }
    for match, args in cases.items():
        lm = CausalLM.from_preset(
            "tiny", position_embedding="rotary", use_bias=False, **args
        )
        lm.tokenizer = tokenizers.ByteTokenizer()
        with pytest.raises(errors.InputError, match=match):
            huggingface.to_huggingface(lm, tmp_path / "a")
    lm = CausalLM.from_preset("tiny")
    lm.tokenizer = tokenizers.ByteTokenizer()
    with pytest.raises(errors.InputError, match="weights must be one of"):
        huggingface.to_huggingface(lm, tmp_path / "a", weights="float16")
    with pytest.raises(errors.InputError, match="int8"):
        huggingface.to_huggingface(
            weights.convert_weights(lm, "int8"), tmp_path / "a"
        )
    assert not os.path.exists(tmp_path / "a")
