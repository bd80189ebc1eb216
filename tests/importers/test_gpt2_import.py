"""GPT-2 import checked against keras-hub, from files made in the test."""

import base64
import json
import os
import subprocess
import sys

import gpt2_files
import keras_hub
import numpy as np
import pytest

from tflm import errors
from tflm import importers
from tflm.export import saved_model
from tflm.importers import gpt2
from tflm.importers import weights
from tflm.models import CausalLM

PROMPT = "The quick brown fox, 今天天气很好 🍕"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVING_CHECK = os.path.join(ROOT, "tflm", "export", "serving_check.py")


def _inputs(tokenizer, text=PROMPT):
    ids = tokenizer.tokenize(text).numpy()[None]
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def test_logits_equal_keras_hub(imported, reference):
    model, tokenizer = imported
    x = _inputs(tokenizer)
    assert x["token_ids"].shape[1] > 10
    ours = model(x).numpy()
    np.testing.assert_allclose(ours, reference(x).numpy(), atol=1e-4)
    assert ours.std() > 0.5  # random weights large enough to matter
    assert model.tokenizer is tokenizer
    assert tokenizer.vocabulary_size == model.backbone.vocabulary_size


def test_greedy_generation_equals_keras_hub(imported, reference):
    model, tokenizer = imported
    prompt = tokenizer.tokenize(PROMPT).numpy().tolist()
    new = 8
    ids = np.zeros((1, len(prompt) + new), "int32")
    ids[0, : len(prompt)] = prompt
    mask = ids != 0
    mask[0, : len(prompt)] = True
    theirs = reference.generate(
        {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
    )["token_ids"][0, len(prompt) :].tolist()
    ours = model.generate(prompt, max_new_tokens=new, temperature=0.0)
    assert tokenizer.eos_id not in theirs
    assert ours == theirs
    assert len(set(ours)) > 2


def test_prefixed_names_and_model_dir(tmp_path, hf_dir, imported):
    source = str(tmp_path / "hf")
    gpt2_files.write_checkpoint(source, prefix="transformer.")
    out = importers.import_checkpoint(source, tmp_path / "model")
    assert out == str(tmp_path / "model")
    loaded = CausalLM.from_preset(out)
    assert type(loaded.tokenizer).__name__ == "GPT2BPETokenizer"
    x = _inputs(loaded.tokenizer)
    np.testing.assert_allclose(
        loaded(x).numpy(), imported[0](x).numpy(), atol=1e-6
    )


def test_keras_hub_preset_import(tmp_path, hf_dir, reference):
    tokenizer = keras_hub.models.GPT2Tokenizer.from_preset(hf_dir)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer)
    lm = keras_hub.models.GPT2CausalLM(reference.backbone, preprocessor)
    preset = str(tmp_path / "preset")
    lm.save_to_preset(preset)
    assert importers.detect_format(preset) == importers.KERAS_HUB
    model, ours = importers.load_checkpoint(preset)
    x = _inputs(ours)
    np.testing.assert_array_equal(x["token_ids"][0], tokenizer(PROMPT))
    np.testing.assert_allclose(
        model(x).numpy(), reference(x).numpy(), atol=1e-4
    )


def test_export_serves_under_tf_serving_conditions(tmp_path, imported):
    model, tokenizer = imported
    prompt = "The dog"
    prompt_ids = tokenizer.tokenize(prompt).numpy().tolist()
    expected = model.generate(prompt_ids, max_new_tokens=5, temperature=0.0)
    path = saved_model.export(model, str(tmp_path / "serving"), warmup=False)
    assert {"vocab.json", "merges.txt"} <= set(os.listdir(f"{path}/assets"))
    requests = [
        {
            "instances": [
                {
                    "prompt": prompt,
                    "max_new_tokens": 5,
                    "temperature": 0.0,
                    "top_k": 0,
                    "top_p": 1.0,
                    "seed": 0,
                }
            ]
        },
        {"signature_name": "tokenize", "instances": [PROMPT]},
    ]
    request_file = tmp_path / "requests.json"
    request_file.write_text(json.dumps(requests))
    proc = subprocess.run(
        [sys.executable, SERVING_CHECK, path, "--requests", str(request_file)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["xla_disabled"] and not report["unknown_ops"]
    generated, tokenized = report["results"]
    assert "error" not in generated, generated
    outputs = generated["outputs"]
    assert outputs["num_tokens"] == [len(expected)]
    assert outputs["token_ids"][0][: len(expected)] == expected
    text = outputs["text"][0]  # random weights: maybe not valid UTF-8
    text = base64.b64decode(text["b64"]) if "b64" in text else text.encode()
    assert text == tokenizer.detokenize(expected).numpy()
    ids = tokenizer.tokenize(PROMPT).numpy().tolist()
    assert tokenized["outputs"]["token_ids"] == [ids]


def _rewrite_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def test_import_never_replaces_a_model_silently(tmp_path, hf_dir):
    out = tmp_path / "trained"
    importers.import_checkpoint(hf_dir, out)
    (out / "train").mkdir()
    (out / "train" / "state.json").write_text("{}")
    (out / "NOTES.md").write_text("mine")
    weights = (out / "model.weights.h5").read_bytes()
    with pytest.raises(errors.InputError, match="--overwrite"):
        importers.import_checkpoint(hf_dir, out)
    assert (out / "model.weights.h5").read_bytes() == weights
    assert (out / "train" / "state.json").exists()
    importers.import_checkpoint(hf_dir, out, overwrite=True)
    # The old training state belonged to the old weights; notes stay.
    assert sorted(os.listdir(out)) == [
        "NOTES.md",
        "config.json",
        "model.weights.h5",
        "tokenizer",
    ]


def test_other_model_type_is_refused(tmp_path):
    gpt2_files.write_checkpoint(str(tmp_path))
    _rewrite_config(str(tmp_path), model_type="bert")
    with pytest.raises(ValueError, match="'bert'.* imports gpt2, llama"):
        importers.import_checkpoint(tmp_path, tmp_path / "out")
    _rewrite_config(
        str(tmp_path), model_type="gpt2", activation_function="relu"
    )
    with pytest.raises(ValueError, match="activation_function is 'relu'"):
        gpt2.load_hf_gpt2(tmp_path)


def test_truncated_weights_name_file_and_tensor(tmp_path):
    gpt2_files.write_checkpoint(str(tmp_path))
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="model.safetensors: truncated") as e:
        gpt2.load_hf_gpt2(tmp_path)
    assert "tensor '" in str(e.value) and str(path) in str(e.value)


def test_wrong_file_is_named(tmp_path):
    gpt2_files.write_checkpoint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        gpt2.load_hf_gpt2(tmp_path)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    gpt2_files.write_checkpoint(str(tmp_path))
    _rewrite_config(str(tmp_path), n_inner=48)
    with pytest.raises(ValueError) as e:
        gpt2.load_hf_gpt2(tmp_path)
    message = str(e.value)
    assert "model.safetensors: tensor 'h.0.mlp.c_fc.weight'" in message
    assert "[16, 64]" in message and "[16, 48]" in message


def test_keras_hub_preset_of_another_model_is_refused(tmp_path):
    config = {"class_name": "LlamaBackbone", "config": {"num_layers": 2}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert importers.detect_format(tmp_path) == importers.KERAS_HUB
    with pytest.raises(ValueError, match="class_name is 'LlamaBackbone'"):
        importers.load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"layers": 3}))
    with pytest.raises(ValueError, match="neither a Hugging Face config"):
        importers.detect_format(tmp_path)


@pytest.mark.parametrize(
    "sizes, preset",
    [
        (dict(n_embd=768, n_layer=12, n_head=12), "gpt2-124m"),
        (dict(n_embd=1024, n_layer=24, n_head=16), "gpt2-355m"),
    ],
)
def test_gpt2_configs_map_onto_presets(sizes, preset):
    # Hugging Face's `gpt2` and `gpt2-medium` config.json, in short.
    config = gpt2_files.hf_config(50257, n_positions=1024, n_ctx=1024, **sizes)
    args = gpt2.backbone_args(config, "config.json")
    assert weights.matching_preset(args) == preset
