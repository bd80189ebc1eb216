"""LoRA fine-tuning of an imported ChatML (Qwen2-style) checkpoint.

`tflm finetune` takes the Hugging Face checkpoint directory itself as the
parent and chat `.jsonl` data of a synthetic task (a keyword among filler
words names a fixed answer). The tuned model answers held-out prompts in
the family's template and stops at `<|im_end|>`; its export answers the
same through the `chat` signature under TF Serving's conditions. The loss
is taken on the reply's ids and `<|im_end|>` only.
"""

import json
import os
import random
import subprocess
import sys
import time

import family_checkpoints
import numpy as np
import pytest
import serving_helpers as helpers

from tflm import export as export_lib
from tflm import importers
from tflm.data import tasks
from tflm.models import model_dir
from tflm.models.causal_lm import CausalLM

ANSWERS = {"cat": "red", "dog": "blue", "fox": "green", "sun": "sky"}
FILLER = (
    "the what is say please now tell me a word of you are hello there and "
    "then why how many"
).split()
SEQUENCE_LENGTH = 40
STEPS = 120


def _examples(count: int, seed: int) -> list[tuple[str, str]]:
    """`(prompt, answer)`: 2-4 filler words with a keyword among them."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        key = rng.choice(sorted(ANSWERS))
        words = rng.sample(FILLER, rng.randint(2, 4))
        words.insert(rng.randint(0, len(words)), key)
        examples.append((" ".join(words), ANSWERS[key]))
    return examples


def _conversation(prompt, answer=None):
    turns = [{"role": "user", "content": prompt}]
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return turns


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The checkpoint, the training `.jsonl` (128 examples; the encoding of
    task examples is eager, a few tenths of a second each with a BPE
    tokenizer) and 40 held-out prompts none of which is trained on."""
    root = tmp_path_factory.mktemp("family-finetune")
    checkpoint = family_checkpoints.write_chatml(str(root / "hf"))
    train = _examples(128, seed=0)
    seen = {prompt for prompt, _ in train}
    heldout = [e for e in _examples(200, seed=1) if e[0] not in seen][:40]
    data = root / "chat.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for prompt, answer in train:
            messages = _conversation(prompt, answer)
            f.write(json.dumps({"messages": messages}) + "\n")
    return {
        "checkpoint": checkpoint,
        "data": str(data),
        "heldout": heldout,
        "root": root,
        "sha256": model_dir.fingerprint(checkpoint),
    }


@pytest.fixture(scope="module")
def tuned(task):
    """`tflm finetune CHECKPOINT --lora-rank 8 ...`: the tuned directory."""
    out = str(task["root"] / "tuned")
    argv = [
        *(sys.executable, "-m", "tflm", "finetune", task["checkpoint"]),
        *("--data", task["data"], "--out", out),
        *("--lora-rank", "8", "--lora-targets", "query", "key", "value"),
        *("output", "mlp_in", "mlp_out"),
        *("--steps", str(STEPS), "--batch-size", "16"),
        *("--sequence-length", str(SEQUENCE_LENGTH)),
        *("--learning-rate", "1e-2", "--warmup-steps", "10"),
        *("--weight-decay", "0", "--checkpoint-every", "40"),
        *("--validate-every", "40", "--jit-compile", "off"),
    ]
    start = time.perf_counter()
    process = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert process.returncode == 0, process.stderr[-4000:]
    print(f"tflm finetune: {time.perf_counter() - start:.1f} s")
    return out


def _answers(lm, prompts):
    conversations = [_conversation(p) for p in prompts]
    return lm.generate(
        conversations, max_new_tokens=4, jit_compile=False, return_details=True
    )


def test_loss_is_on_the_reply_and_im_end_only(task):
    """Encoded windows: transformers' rendering of the conversation, with
    the loss exactly on the reply's ids and the `<|im_end|>` after it."""
    lm, tokenizer = importers.load_checkpoint(task["checkpoint"])
    assert lm.template["name"] == "chatml"
    reference = family_checkpoints.hf_tokenizer(task["checkpoint"])
    im_end = reference.convert_tokens_to_ids(family_checkpoints.IM_END)
    examples = tasks.read_examples([task["data"]])[:6]
    ids, loss, real = tasks.encode_examples(
        examples, tokenizer, SEQUENCE_LENGTH, lm.template
    )
    assert ids.shape == (6, SEQUENCE_LENGTH + 1)
    for row, conversation in enumerate(examples):
        tokens = ids[row][real[row]].tolist()
        rendered = family_checkpoints.chat_ids(
            task["checkpoint"], conversation, generation=False
        )
        # transformers' rendering ends with "<|im_end|>\n"; training stops
        # at the end token.
        assert rendered[: len(tokens)] == tokens
        assert tokens[-1] == im_end and len(rendered) == len(tokens) + 1
        reply = reference.encode(
            conversation[-1]["content"], add_special_tokens=False
        )
        assert ids[row][loss[row] > 0].tolist() == [*reply, im_end]
        # The loss covers the last ids of the example, and nothing else.
        weights = loss[row][real[row]]
        assert set(weights.tolist()) == {0.0, 1.0}
        assert weights[-len(reply) - 1 :].all()
        assert not weights[: -len(reply) - 1].any()
        assert not loss[row][~real[row]].any()


def test_lora_finetune_learns_the_task(task, tuned):
    prompts = [p for p, _ in task["heldout"]]
    wanted = [a for _, a in task["heldout"]]
    parent, _ = importers.load_checkpoint(task["checkpoint"])
    before = _answers(parent, prompts)["outputs"]
    lm = CausalLM.from_preset(tuned)
    after = _answers(lm, prompts)
    right = [g == w for g, w in zip(after["outputs"], wanted, strict=True)]
    print(json.dumps({"before": before[:4], "right": np.mean(right)}))
    assert not any(g == w for g, w in zip(before, wanted, strict=True))
    assert np.mean(right) >= 0.75
    # A right answer is the whole reply: it ends at `<|im_end|>`.
    stops = [s for s, r in zip(after["stop_reason"], right, strict=True) if r]
    assert set(stops) == {"eos"}
    saved = json.load(open(os.path.join(tuned, "config.json")))
    assert saved["template"] == lm.template == parent.template
    assert saved["template"] == {
        "name": "chatml",
        "default_system": "You are a helpful assistant.",
    }
    assert saved["lora"]["rank"] == 8
    assert saved["parent"] == {
        "path": task["checkpoint"],
        "kind": "huggingface",
        "sha256": task["sha256"],
    }
    assert model_dir.fingerprint(task["checkpoint"]) == task["sha256"]


def test_tuned_export_answers_through_chat(task, tuned):
    lm = CausalLM.from_preset(tuned)
    path = export_lib.export(lm, str(task["root"] / "export"), warmup=False)
    prompts = [p for p, _ in task["heldout"][:12]]
    body = {
        "signature_name": "chat",
        "inputs": {
            "role": [["user"] for _ in prompts],
            "content": [[p] for p in prompts],
            "max_new_tokens": [4] * len(prompts),
            "temperature": [0.0] * len(prompts),
            "top_k": [0] * len(prompts),
            "top_p": [1.0] * len(prompts),
            "seed": [0] * len(prompts),
        },
    }
    report = helpers.serving_check(path, [body])
    assert report["xla_disabled"] and report["unknown_ops"] == []
    (served,) = report["results"]
    assert "error" not in served, served
    local = _answers(lm, prompts)
    outputs = served["outputs"]
    assert outputs["text"] == local["outputs"]
    assert outputs["num_tokens"] == local["num_tokens"]
    assert outputs["stop_reason"] == local["stop_reason"]
    wanted = [a for _, a in task["heldout"][:12]]
    right = [t == w for t, w in zip(outputs["text"], wanted, strict=True)]
    assert np.mean(right) >= 0.75
