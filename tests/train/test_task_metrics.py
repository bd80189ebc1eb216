"""`tflm eval` on prompt/completion data: the loss, and exact match, chrF,
BLEU and ROUGE-L of the model's greedy completions."""

import json
import math
import sys

import keras
import pytest

from tflm import cli
from tflm import errors
from tflm import tokenizers
from tflm.models import backbone as backbone_lib
from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.tokenizers import templates
from tflm.train import task_metrics

sacrebleu = pytest.importorskip("sacrebleu", reason="the metrics extra")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

PROMPTS = ["abc", "hello there", "x", "one two", "zz top"]
NEW = 6


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A tiny random byte model saved with the chat template. Its position
    embeddings are scaled up so that its greedy replies vary (a random
    model with tied embeddings otherwise repeats the prompt's last byte)."""
    keras.utils.set_random_seed(0)
    tokenizer = tokenizers.ByteTokenizer()
    backbone = backbone_lib.Backbone(
        vocabulary_size=tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=128,
    )
    lm = causal_lm.CausalLM(backbone)
    lm.tokenizer = tokenizer
    positions = backbone.get_layer("position_embedding").embeddings
    positions.assign(positions * 10.0)
    path = str(tmp_path_factory.mktemp("task_metrics") / "model")
    model_dir.save(
        lm, tokenizer, path, metadata={"template": templates.TEMPLATE}
    )
    return path


def _own_completions(path):
    """The model's greedy replies, through `generate` on conversations."""
    lm = causal_lm.CausalLM.from_preset(path)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    return lm.generate(chats, NEW, temperature=0.0, jit_compile=False)


def test_eval_task_metrics_equal_sacrebleu_and_rouge(chat_dir, tmp_path):
    predictions = _own_completions(chat_dir)
    # Some references are the model's own replies, so every metric is
    # neither 0 nor its maximum.
    references = [
        pred if i % 2 == 0 else "nothing alike"
        for i, pred in enumerate(predictions)
    ]
    data = tmp_path / "pairs.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for prompt, ref in zip(PROMPTS, references, strict=True):
            f.write(json.dumps({"prompt": prompt, "completion": ref}) + "\n")
    argv = ["eval", chat_dir, "--data", str(data)]
    argv += ["--max-new-tokens", str(NEW), "--batch-size", "2"]
    out = _run_cli(argv)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [
        scorer.score(r, p)["rougeL"].fmeasure
        for p, r in zip(predictions, references, strict=True)
    ]
    assert out["examples"] == len(PROMPTS)
    assert out["exact_match"] == pytest.approx(3 / 5)
    assert out["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(predictions, [references]).score
    )
    assert out["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(predictions, [references]).score
    )
    assert out["rouge_l"] == pytest.approx(sum(rouge) / len(rouge))
    assert 0 < out["chrf"] < 100 and 0 < out["rouge_l"] < 1
    assert math.isfinite(out["loss"]) and out["loss"] > 0
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))


def _run_cli(argv):
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli.main(argv) == 0
    return json.loads(stdout.getvalue().strip().splitlines()[-1])


def test_missing_metrics_packages_is_an_input_error(
    chat_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(errors.InputError, match=r'pip install "tflm\[metr'):
        task_metrics.evaluate_task("no_such_model", ["pairs.jsonl"])
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    assert cli.main(["eval", chat_dir, "--data", str(data)]) == 2
    assert 'pip install "tflm[metrics]"' in capsys.readouterr().err
