"""Greedy generation with logits processors on an imported random GPT-2
== Hugging Face transformers' `generate`, token for token."""

import os

import gpt2_files
import pytest

from tflm import importers
from tflm.models.causal_lm import CausalLM

transformers = pytest.importorskip(
    "transformers", reason="transformers (the bench extra) is not installed"
)
torch = pytest.importorskip("torch", reason="torch is not installed")

PROMPTS = [[10, 20, 30, 40], [7, 189, 7, 189, 7, 3]]
NEW = 12
EOS_LIKE = 189  # a frequent token of the seed-0 weights


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same files read by both; end-of-text's embedding (tied to its
    logit) is set near a frequent token's, so that greedy decoding would
    end early and `min_new_tokens` has something to ban."""
    path = str(tmp_path_factory.mktemp("hf_gpt2_generate"))
    eos = gpt2_files.write_checkpoint_ending_like(path, EOS_LIKE, 1.1)
    hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    lm = CausalLM.from_preset(
        importers.import_checkpoint(path, os.path.join(path, "tflm"))
    )
    return hf, lm, eos


def _hf_new_tokens(hf, eos, prompt, **kwargs):
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW,
            do_sample=False,
            num_beams=1,
            pad_token_id=eos,
            eos_token_id=eos,
            **kwargs,
        )
    row = out[0, len(prompt) :].tolist()
    return row[: row.index(eos)] if eos in row else row


def _tflm_new_tokens(lm, **kwargs):
    out = lm.generate(
        PROMPTS, NEW, return_details=True, jit_compile=False, **kwargs
    )
    return out["token_ids"], out["stop_reason"]


CONTROLS = {
    "greedy": {},
    "repetition_penalty": {"repetition_penalty": 1.3},
    "no_repeat_ngram_size": {"no_repeat_ngram_size": 2},
    "min_new_tokens": {"min_new_tokens": 8},
}


@pytest.mark.parametrize("control", sorted(CONTROLS))
def test_generate_equals_transformers(models, control):
    hf, lm, eos = models
    kwargs = CONTROLS[control]
    expected = [_hf_new_tokens(hf, eos, p, **kwargs) for p in PROMPTS]
    got, _ = _tflm_new_tokens(lm, **kwargs)
    assert got == expected
    # Each control changes what greedy decoding alone makes.
    if kwargs:
        greedy = [_hf_new_tokens(hf, eos, p) for p in PROMPTS]
        assert expected != greedy


def test_min_new_tokens_holds_back_an_early_end(models):
    """Without the minimum a row ends (on end-of-text) before 8 tokens;
    with it, every row has at least 8."""
    _, lm, _ = models
    plain, reasons = _tflm_new_tokens(lm)
    assert any(len(r) < 8 for r in plain) and "eos" in reasons
    held, _ = _tflm_new_tokens(lm, min_new_tokens=8)
    assert all(len(r) >= 8 for r in held)
