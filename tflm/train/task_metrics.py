"""Task metrics of a model on prompt/completion (or chat) examples.

The loss is the token-weighted cross-entropy on the completion tokens
(rendered by `tflm.tokenizers.templates`, as in fine-tuning); the
completions are greedy, from the templated prompt, and are scored against
the references with exact match, chrF and BLEU (`sacrebleu`) and ROUGE-L F1
(`rouge-score`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tflm import errors
from tflm.data import tasks
from tflm.models import causal_lm
from tflm.models import train_step
from tflm.tokenizers import template_render


def is_task_data(paths: Sequence[str]) -> bool:
    """Whether `paths` are `.jsonl` files whose first record is a
    prompt/completion or chat example (not `{"text": ...}`)."""
    if not paths or not all(str(p).endswith(".jsonl") for p in paths):
        return False
    first = str(paths[0])
    if not os.path.isfile(first):
        return False
    with open(first, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                keys = ("messages", "completion")
                return isinstance(record, dict) and any(
                    k in record for k in keys
                )
    return False


def _loss(lm, windows, batch_size: int) -> float:
    dataset = tasks.to_dataset(windows, batch_size=batch_size)
    total = weight = 0.0
    for x, y, w in dataset:
        total += float(train_step.token_loss_sum(lm, x, y, w, False))
        weight += float(np.sum(w))
    return total / max(weight, 1.0)


def _require_metrics() -> None:
    """Raises `InputError` if sacrebleu or rouge-score is missing."""
    try:
        import rouge_score  # noqa: F401
        import sacrebleu  # noqa: F401
    except ImportError as err:
        raise errors.InputError(
            f"Task metrics need sacrebleu and rouge-score ({err}); install "
            'them with: pip install "tflm[metrics]"'
        ) from None


def _scores(predictions: list[str], references: list[str]) -> dict:
    _require_metrics()
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [
        scorer.score(ref, pred)["rougeL"].fmeasure
        for pred, ref in zip(predictions, references, strict=True)
    ]
    exact = [
        p.strip() == r.strip()
        for p, r in zip(predictions, references, strict=True)
    ]
    return {
        "exact_match": float(np.mean(exact)),
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "rouge_l": float(np.mean(rouge)),
    }


_XLA_FROM_BATCHES = 8


def _longest_reply(conversations, lm) -> int:
    """The most tokens of any reference reply: greedy decoding past it (and
    its end token) only adds text that the metrics count against."""
    replies = tf.constant([c[-1]["content"] for c in conversations])
    lengths = lm.tokenizer.tokenize(replies).row_lengths()
    return int(tf.reduce_max(lengths)) if len(conversations) else 0


def greedy_completions(
    lm, conversations, max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """The greedy reply to each conversation (its last turn excluded)."""
    tokenizer = lm.tokenizer
    context = lm.backbone.max_sequence_length
    prompts = []
    encoded = template_render.encode_prompts(
        [c[:-1] for c in conversations], tokenizer, lm.template
    )
    for ids in encoded:
        # The pipeline keeps a prompt whole and caps its new tokens at the
        # room left; only a prompt that fills the context is cut, here,
        # keeping its start token.
        keep = context - 1
        if len(ids) > keep:
            ids = np.concatenate([ids[:1], ids[len(ids) - keep + 1 :]])
        prompts.append(ids.tolist())
    # XLA's compile of the decode loop (seconds on a CPU) pays off only
    # over many batches; the plain graph answers a few in less time.
    jit_compile = len(prompts) > _XLA_FROM_BATCHES * batch_size
    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        real = len(chunk)
        if len(prompts) > batch_size:
            # Every batch the same size: one trace. Rows are independent,
            # so the repeated filler rows change nothing and are dropped.
            chunk = chunk + [chunk[-1]] * (batch_size - real)
        rows = lm.generate(
            chunk,
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            jit_compile=jit_compile,
        )[:real]
        for row in rows:
            text = tokenizer.detokenize(tf.constant(row, tf.int32))
            outputs.append(text.numpy().decode("utf-8", "replace"))
    return outputs


def evaluate_task(
    model_dir: str,
    paths: Sequence[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
) -> dict[str, Any]:
    """Loss and task metrics of the model in `model_dir` on `paths`."""
    _require_metrics()  # Before the model is loaded and run.
    lm = causal_lm.CausalLM.from_preset(model_dir)
    conversations = tasks.read_examples(
        paths, prompt_field=prompt_field, completion_field=completion_field
    )
    context = lm.backbone.max_sequence_length
    windows = tasks.encode_examples(
        conversations, lm.tokenizer, context, lm.template
    )
    loss = _loss(lm, windows, batch_size)
    max_new = min(
        max_new_tokens, _longest_reply(conversations, lm) + 1, context - 1
    )
    predictions = greedy_completions(lm, conversations, max_new, batch_size)
    references = [c[-1]["content"] for c in conversations]
    return {
        "examples": len(conversations),
        "loss": loss,
        "perplexity": float(np.exp(min(loss, 50.0))),
        **_scores(predictions, references),
    }
