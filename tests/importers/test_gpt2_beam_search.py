"""Beam search on an imported random GPT-2 == Hugging Face transformers'."""

import os

import gpt2_files
import numpy as np
import pytest

from tflm import importers
from tflm.models.causal_lm import CausalLM

transformers = pytest.importorskip(
    "transformers", reason="transformers (the bench extra) is not installed"
)
torch = pytest.importorskip("torch", reason="torch is not installed")

PROMPT = [10, 20, 30, 40]
NEW = 10
EOS_LIKE = 189  # a frequent token of the seed-0 weights


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same files read by both. End-of-text's embedding (tied to its
    logit) is set near a frequent token's, so that beams end at different
    lengths and the length penalty changes the winners."""
    path = str(tmp_path_factory.mktemp("hf_gpt2_beam"))
    eos = gpt2_files.write_checkpoint_ending_like(path, EOS_LIKE, 0.9)
    hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    lm = CausalLM.from_preset(
        importers.import_checkpoint(path, os.path.join(path, "tflm"))
    )
    return hf, lm, eos


def _hf_beams(hf, eos, **kwargs):
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([PROMPT]),
            attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
            max_new_tokens=NEW,
            num_beams=4,
            num_return_sequences=4,
            do_sample=False,
            pad_token_id=eos,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    rows = []
    for row in out.sequences[:, len(PROMPT) :].tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows, out.sequences_scores.numpy()


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("length_penalty", [1.0, 0.6])
def test_beam_search_equals_transformers(
    models, length_penalty, early_stopping
):
    hf, lm, eos = models
    expected, scores = _hf_beams(
        hf, eos, length_penalty=length_penalty, early_stopping=early_stopping
    )
    out = lm.generate(
        PROMPT, NEW, num_beams=4, num_return_sequences=4,
        length_penalty=length_penalty, early_stopping=early_stopping,
        return_details=True, jit_compile=False,
    )  # fmt: skip
    assert out["token_ids"] == expected
    np.testing.assert_allclose(out["score"], scores, rtol=1e-5, atol=1e-5)
    # The case exercises finished beams of several lengths.
    assert "eos" in out["stop_reason"]
    assert len({len(r) for r in expected}) > 1 or length_penalty == 1.0
