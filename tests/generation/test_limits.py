"""The size caps of one request (`tflm.generation.spec.limit_checks`):
`CausalLM.generate` refuses what the exported signatures refuse, with
`InputError`, before any work."""

import time

import pytest
import tensorflow as tf

from tflm import errors
from tflm.generation import spec
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import templates
from tflm.tokenizers.byte import ByteTokenizer

CONTEXT = 64
INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def lm():
    model = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=CONTEXT
    )
    model.tokenizer = ByteTokenizer()
    model.template = templates.TEMPLATE
    return model


# (prompts, settings, what the message names): the requests of issue 26.
HOSTILE = [
    (["a"], dict(num_return_sequences=INT32_MAX), "num_return_sequences"),
    (["a"], dict(num_return_sequences=10**6), "num_return_sequences"),
    (["a"] * 64, dict(num_return_sequences=1000), "num_return_sequences"),
    (["a"], dict(num_beams=INT32_MAX), "num_beams"),
    (["a"], dict(num_beams=10**6), "num_beams"),
    (["a"] * 8, dict(num_beams=1000), "num_beams"),
    (["a"], dict(num_beams=2**40), "num_beams"),  # past int32 too
    (["x" * 1024] * 10_000, {}, "prompt rows"),
    (["a"], dict(no_repeat_ngram_size=INT32_MAX), "no_repeat_ngram_size"),
    (["a"], dict(no_repeat_ngram_size=CONTEXT + 1), "no_repeat_ngram_size"),
]


@pytest.mark.parametrize("prompts, settings, name", HOSTILE)
def test_generate_refuses_requests_past_the_caps(lm, prompts, settings, name):
    start = time.monotonic()
    with pytest.raises(errors.InputError) as raised:
        lm.generate(prompts, 4, jit_compile=False, **settings)
    message = str(raised.value)
    assert name in message and "Received:" in message, message
    assert "\n" not in message
    assert time.monotonic() - start < 5  # refused before any decoding


def test_the_caps_name_their_numbers(lm):
    with pytest.raises(errors.InputError) as raised:
        lm.generate(["a"] * 8, 4, num_beams=1000, jit_compile=False)
    assert str(raised.value) == (
        "prompt rows * num_beams must be at most 4096 (the rows decoded in "
        "one request); split the request. Received: prompts=8, "
        "num_beams=1000."
    )


def test_requests_within_the_caps_are_answered(lm):
    out = lm.generate(
        ["a", "b"],
        1,
        num_return_sequences=8,
        no_repeat_ngram_size=CONTEXT,
        jit_compile=False,
    )
    assert len(out) == 16


@pytest.mark.parametrize(
    "prompts, per_prompt, ok", [(512, 8, True), (513, 8, False)]
)
def test_the_row_cap_boundary(prompts, per_prompt, ok):
    for name in ("num_return_sequences", "num_beams"):
        values = {name: tf.fill([prompts], per_prompt)}
        (check,) = spec.limit_checks(values, prompts, 1024)
        assert bool(check[0]) == ok


def test_decode_cells_count_the_request_not_the_context(lm):
    # 2,104 rows of 60-id prompts and 4 new tokens: 134,656 cells.
    with pytest.raises(errors.InputError) as raised:
        lm.generate([[5] * 60] * 263, 4, num_return_sequences=8)
    message = str(raised.value)
    assert spec.CELLS_RULE in message and "\n" not in message, message
    with pytest.raises(errors.InputError, match="num_beams"):
        lm.generate([[5] * 60] * 64, 4, num_beams=33)
    # A model whose context alone is past the cap still answers short
    # requests (Llama 3.1's 131,072 tokens, 8 prompts).
    long = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=spec.MAX_DECODE_CELLS
    )
    out = long.generate([[5, 6]] * 8, 3, jit_compile=False)
    assert [len(row) for row in out] == [3] * 8


def test_a_conversation_without_turns_is_refused(lm):
    turn = {"role": "user", "content": "hi"}
    with pytest.raises(errors.InputError, match="at least one turn"):
        lm.generate([[turn], []], 2, jit_compile=False)
    with pytest.raises(errors.InputError):  # not answered as ids either
        lm.generate([[]], 2, jit_compile=False)


def test_negative_num_beams_is_refused(lm):
    with pytest.raises(errors.InputError, match="num_beams"):
        lm.generate("a", 2, num_beams=-1, jit_compile=False)
