"""`score`'s head runs on blocks of rows: any block size gives the same
log-likelihoods."""

import keras
import numpy as np
import tensorflow as tf

from tflm.export import signatures
from tflm.generation import pipeline as pipeline_lib
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers.byte import ByteTokenizer

TEXTS = ["hello there", "", "a", "abcdefghijklmnop" * 3, "zz top"]


def _scores(monkeypatch, budget):
    monkeypatch.setattr(pipeline_lib, "SCORE_LOGITS", budget)
    keras.utils.set_random_seed(0)
    lm = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=64
    )
    lm.tokenizer = ByteTokenizer()
    module = signatures.ServingModule(lm, lm.tokenizer)
    out = module.score({"text": tf.constant(TEXTS)})
    return out["log_likelihood"].numpy(), out["num_tokens"].numpy()


def test_score_is_the_same_in_blocks_of_any_size(monkeypatch):
    whole, count = _scores(monkeypatch, 2**30)  # one block
    for budget in (1, 3 * 64 * 259):  # 1 and 3 rows a block
        blocked, blocked_count = _scores(monkeypatch, budget)
        np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(blocked_count, count)
    assert count.tolist() == [len(t) for t in TEXTS]
    assert np.all(whole[count > 0] < 0) and whole[1] == 0.0
