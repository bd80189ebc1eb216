"""An imported GPT-2 (random weights, Hugging Face layout) fine-tunes."""

import json
import os

import numpy as np

from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.train import config as config_lib
from tflm.train import fit


def test_gpt2_checkpoint_fine_tunes_and_stays_unmodified(hf_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as f:
        for word in ["dog", "cat", "fox", "sun", "hello", "world"] * 4:
            f.write(json.dumps({"prompt": word, "completion": word[::-1]}))
            f.write("\n")
    before = model_dir.fingerprint(hf_dir)
    config = config_lib.TrainConfig(
        data=[str(data)],
        out=str(tmp_path / "tuned"),
        init_from=hf_dir,
        data_format="task",
        steps=4,
        batch_size=4,
        sequence_length=32,
        checkpoint_every=2,
        validate_every=2,
        jit_compile="off",
    )
    result = fit.train(config, verbose=0)
    assert model_dir.fingerprint(hf_dir) == before
    saved = json.load(open(os.path.join(result.directory, "config.json")))
    assert saved["parent"] == {
        "path": hf_dir,
        "kind": "huggingface",
        "sha256": before,
    }
    assert saved["backbone"]["hidden_dim"] == 16
    tuned = causal_lm.CausalLM.from_preset(result.directory)
    assert tuned.tokenizer.type_name == "gpt2_bpe"
    assert np.isfinite(
        np.concatenate([w.ravel() for w in tuned.get_weights()])
    ).all()
    assert tuned.generate("dog", max_new_tokens=2) is not None
