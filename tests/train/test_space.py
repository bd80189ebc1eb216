"""The space a checkpoint is checked for is about what it writes: a LoRA
fine-tune that keeps its base in its parent writes adapters and their
training state, not the weights (GPT-2 small asked for ~1 GB to write
~1 MB)."""

import os

import pytest
import train_helpers

from tflm import atomic
from tflm.models import causal_lm
from tflm.models import model_dir
from tflm.train import fit
from tflm.train import optimizer as optimizer_lib
from tflm.train import space


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return train_helpers.reversal_task(tmp_path_factory.mktemp("task"))


def _written(directory: str) -> int:
    """Bytes of a checkpoint (`logs/` is not part of one)."""
    total = 0
    for entry in model_dir.MANAGED:
        path = os.path.join(directory, entry)
        if os.path.isdir(path):
            total += atomic.tree_size(path)
        elif os.path.isfile(path):
            total += os.path.getsize(path)
    return total


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_checkpoint_asks_for_about_what_it_writes(task, tmp_path, lora):
    out = tmp_path / "out"
    settings = dict(steps=2, batch_size=4, checkpoint_every=1)
    settings.update(validate_every=1, warmup_steps=0, jit_compile="off")
    if lora:
        settings.update(lora_rank=2)
    config = train_helpers.task_config(task, out, **settings)
    fit.train(config, verbose=0)
    weights = os.path.join(out, model_dir.WEIGHTS_FILE)
    assert os.path.exists(weights) != lora  # the base stays in the parent
    assert os.path.isfile(os.path.join(out, "train", "best.npz"))
    # The model and optimizer of that run, as a checkpoint finds them.
    lm = causal_lm.CausalLM.from_preset(str(out))
    optimizer = optimizer_lib.from_config(config, 2)
    optimizer.build(lm.trainable_variables)
    needed = space.checkpoint_bytes(
        lm,
        optimizer,
        weights=not lora,
        best=True,
        lora=lora,
        tokenizer_dir=os.path.join(out, model_dir.TOKENIZER_DIR),
    )
    written = _written(str(out))
    # A little more than written: headers and config files are bounded.
    assert written <= needed <= written + 2 * space._FIXED
