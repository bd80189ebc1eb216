"""`evaluate` checks its arguments and always returns JSON-safe numbers."""

import json

import numpy as np
import pytest
import train_helpers

from tflm import cli
from tflm import data
from tflm import errors
from tflm import tokenizers
from tflm.models import causal_lm
from tflm.models import losses as losses_lib
from tflm.models import model_dir as model_dir_lib
from tflm.train import evaluate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Small, to keep the runs short: 60 paragraphs, about 20 batches."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    return train_helpers.write_corpus(path, paragraphs=60)


def _save_model(out, weight=None):
    tokenizer = tokenizers.ByteTokenizer()
    lm = causal_lm.CausalLM.from_preset(
        "tiny", vocabulary_size=tokenizer.vocabulary_size
    )
    if weight is not None:
        lm.set_weights([np.full(w.shape, weight) for w in lm.get_weights()])
    model_dir_lib.save(lm, tokenizer, out)
    return str(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("eval") / "model")


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Before, 0 silently meant "the model's context".
        (dict(sequence_length=0), "--sequence-length must be an integer >= 1"),
        (dict(sequence_length=-3), "Received: sequence_length=-3"),
        (dict(sequence_length=17), r"model's context \(16 tokens\)"),
        (dict(batch_size=0), "--batch-size must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_input_error(model_dir, corpus, overrides, message):
    with pytest.raises(errors.InputError, match=message):
        evaluate.evaluate(model_dir, corpus, **overrides)


def test_cli_eval_refuses_sequence_length_0(model_dir, corpus, capsys):
    argv = ["eval", model_dir, "--data", corpus, "--sequence-length", "0"]
    assert cli.main(argv) == 2
    assert "Received: sequence_length=0." in capsys.readouterr().err


def test_nan_weights_give_null_metrics_and_valid_json(tmp_path, corpus, capsys):
    out = _save_model(tmp_path / "nan", weight=np.nan)
    assert cli.main(["eval", out, "--data", corpus]) == 0
    # Before, this printed `{"loss": NaN, ...}`, which JSON parsers refuse.
    result = json.loads(capsys.readouterr().out, parse_constant=_refuse)
    assert result["loss"] is None and result["perplexity"] is None
    assert result["bits_per_character"] is None
    assert result["tokens"] > 0 and result["characters"] > 0


def _refuse(constant):
    raise AssertionError(f"not JSON: {constant}")


def test_keras_evaluate_fit_and_tflm_eval_agree(model_dir, corpus):
    """Before, Keras' `evaluate` on `make_dataset(split="validation")`
    reported n/(n + 1) of the loss (14/15 in the issue): each batch was
    weighted by its static row count, added once more by the call that found
    the data used up (a plain Keras model does the same), and the split's
    last, smaller batch was left out.
    """
    lm = causal_lm.CausalLM.from_preset(model_dir)
    lm.compile(learning_rate=0.0)  # fit leaves the weights as they are
    common = dict(sequence_length=16, batch_size=8, split="validation")
    # One full batch of a finite dataset: its static shape is what Keras
    # counted once too often (here 2 batches for 1, half the loss), in
    # evaluate and in training's running loss.
    train = data.make_dataset(
        corpus, lm.tokenizer, **common, drop_remainder=True, shuffle=False
    )
    full = _mean_loss(lm, train)
    assert lm.evaluate(train, verbose=0)[0] == pytest.approx(full, abs=1e-4)

    validation = data.make_dataset(corpus, lm.tokenizer, **common)
    rows = [int(y.shape[0]) for _, y, _ in validation]
    assert len(rows) > 1 and rows[-1] % 8  # not a round count of batches
    expected = evaluate.evaluate(model_dir, corpus, **common)["loss"]
    loss = lm.evaluate(validation, verbose=0, return_dict=True)["loss"]
    history = lm.fit(train, validation_data=validation, verbose=0).history
    assert loss == pytest.approx(expected, abs=1e-4)
    assert history["val_loss"][0] == pytest.approx(expected, abs=1e-4)
    assert history["loss"][0] == pytest.approx(full, abs=1e-4)


def _mean_loss(lm, dataset):
    """The token-weighted mean loss of `lm` over `dataset`, batch by batch."""
    total = tokens = 0.0
    for x, y, weight in dataset:
        losses = losses_lib.sparse_cross_entropy(y, lm(x))
        total += float(np.sum(losses * weight))
        tokens += float(np.sum(weight))
    return total / tokens
