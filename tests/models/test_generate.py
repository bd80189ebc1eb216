"""`CausalLM.generate` and `CausalLM.stream` on tiny random models."""

import logging

import keras
import numpy as np
import pytest

from tflm import errors
from tflm.generation import arguments
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers.byte import ByteTokenizer

CONTEXT = 64
PROMPT = [40, 75, 101, 60, 90]  # 5 ids: prompt bucket 8
OTHER = [120, 33, 7, 250, 14, 99, 180, 61, 45, 77, 3]  # 11 ids: bucket 16
STEPS = 24  # with a bucket-8 prompt: cache bucket 32


def _build(tie_embeddings=True, scale=False):
    keras.utils.set_random_seed(0)
    lm = CausalLM.from_preset(
        "tiny",
        vocabulary_size=259,
        max_sequence_length=CONTEXT,
        tie_embeddings=tie_embeddings,
    )
    if scale:
        # Large random weights and an untied head, so that greedy text is
        # not one repeated id and cached/uncached differences would show.
        rng = np.random.default_rng(0)
        for v in lm.weights:
            if len(v.shape) == 2:
                std = (
                    1.0 if "embedding" in v.path else 1.5 / np.sqrt(v.shape[0])
                )
                v.assign(rng.normal(0, std, v.shape).astype("float32"))
            else:
                noise = rng.normal(0, 0.3, v.shape).astype("float32")
                v.assign(v.numpy() + noise)
    lm.tokenizer = ByteTokenizer()
    return lm


@pytest.fixture(scope="module")
def varied():
    return _build(tie_embeddings=False, scale=True)


@pytest.fixture(scope="module")
def plain():
    """Default initialization: logits near uniform over 259 ids."""
    return _build()


def _full_forward_greedy(lm, ids, steps):
    """Repeated argmax over full forward passes, no cache."""
    ids, out = list(ids), []
    for _ in range(steps):
        x = {
            "token_ids": np.array([ids], "int32"),
            "padding_mask": np.ones([1, len(ids)], "int32"),
        }
        logits = np.asarray(lm(x))[0, -1]
        out.append(int(np.argmax(logits)))
        ids.append(out[-1])
    return out


_REFERENCE = {}


def _greedy(lm, ids):
    key = (id(lm), tuple(ids))
    if key not in _REFERENCE:
        _REFERENCE[key] = _full_forward_greedy(lm, ids, STEPS)
    return _REFERENCE[key]


@pytest.fixture(autouse=True)
def _warnings_anew():
    """The context warnings are given once per process: anew per test."""
    arguments._warn_once.cache_clear()


def _details(lm, prompts, **kwargs):
    kwargs.setdefault("jit_compile", False)
    return lm.generate(prompts, return_details=True, **kwargs)


# Correctness


@pytest.mark.parametrize("jit_compile", [False, True])
def test_greedy_equals_full_forward_argmax(varied, jit_compile):
    expected = _greedy(varied, PROMPT)
    assert len(set(expected)) > 3  # not a degenerate repetition
    out = varied.generate(PROMPT, STEPS, jit_compile=jit_compile)
    assert out == expected


def test_batch_of_mixed_lengths_equals_each_alone(varied):
    prompts = [PROMPT[:2], OTHER, PROMPT]
    batch = varied.generate(prompts, STEPS, jit_compile=False)
    assert batch == [_greedy(varied, p) for p in prompts]

    sampled = dict(
        temperature=[1.0, 1.0, 0.7],
        top_k=[0, 20, 0],
        top_p=[1.0, 1.0, 0.9],
        seed=[11, 22, 33],
    )
    batch = varied.generate(prompts, STEPS, jit_compile=False, **sampled)
    for i, prompt in enumerate(prompts):
        alone = {k: v[i] for k, v in sampled.items()}
        assert batch[i] == varied.generate(
            prompt, STEPS, jit_compile=False, **alone
        )
    assert batch[0] != _greedy(varied, prompts[0])


def test_top_k_1_and_temperature_0_equal_greedy(varied):
    expected = _greedy(varied, PROMPT)
    rows = [PROMPT] * 3
    seeds = [0, 1, 2]
    assert (
        varied.generate(
            rows, STEPS, temperature=1.0, top_k=1, seed=seeds, jit_compile=False
        )
        == [expected] * 3
    )
    assert (
        varied.generate(
            rows,
            STEPS,
            temperature=0.0,
            top_k=[0, 5, 0],
            top_p=[1.0, 1.0, 0.5],
            seed=seeds,
            jit_compile=False,
        )
        == [expected] * 3
    )
    assert (
        varied.generate(
            rows,
            STEPS,
            temperature=1.0,
            top_p=1e-6,
            seed=seeds,
            jit_compile=False,
        )
        == [expected] * 3
    )
    # Plain sampling does differ from greedy.
    hot = varied.generate(
        rows, STEPS, temperature=1.0, seed=seeds, jit_compile=False
    )
    assert all(row != expected for row in hot)


def test_same_seed_same_text_different_seeds_differ(plain):
    def run(seed):
        return plain.generate(
            "hello", 16, temperature=1.0, seed=seed, jit_compile=False
        )

    first = run(0)
    assert isinstance(first, str)
    assert run(0) == first
    texts = [run(seed) for seed in range(4)]
    assert texts[0] == first
    assert len(set(texts)) >= 2
    # A row's text depends on its seed, not on its place in the batch.
    batch = plain.generate(
        ["hello"] * 3, 16, temperature=1.0, seed=[3, 0, 3], jit_compile=False
    )
    assert batch == [texts[3], first, texts[3]]


def test_one_seed_draws_different_streams_for_different_prompts(plain):
    # Near-uniform logits: with one noise stream for every prompt, the
    # draws of two prompts would mostly coincide.
    rows = plain.generate(
        [[5, 6, 7], [5, 6, 8], [9]],
        32,
        temperature=1.0,
        seed=7,
        jit_compile=False,
    )
    for a, b in ([0, 1], [0, 2], [1, 2]):
        same = np.mean(np.equal(rows[a], rows[b]))
        assert same < 0.25, (a, b, same)
    # Still a pure function of the seed and the prompt.
    again = plain.generate([[9]], 32, temperature=1.0, seed=7)
    assert again == [rows[2]]


# Stopping


def test_max_new_tokens_per_row(varied):
    expected = _greedy(varied, PROMPT)
    out = _details(varied, [PROMPT] * 3, max_new_tokens=[0, 3, 7])
    assert out["num_tokens"] == [0, 3, 7]
    assert out["stop_reason"] == ["length"] * 3
    assert out["outputs"] == [[], expected[:3], expected[:7]]


def _stop_choice(varied):
    """A step `k` whose greedy token is new at `k` and absent from OTHER's."""
    first, second = _greedy(varied, PROMPT), _greedy(varied, OTHER)
    eos = varied.tokenizer.eos_id
    for k in range(2, STEPS):
        token = first[k]
        if (
            token not in first[:k]
            and token not in second
            and eos not in first[: k + 1]
            and eos not in second
        ):
            return k, token
    pytest.fail(f"no usable stop step in {first} / {second}")


def test_stop_token_truncates_and_padded_rows_stop_changing(varied):
    expected, other = _greedy(varied, PROMPT), _greedy(varied, OTHER)
    k, token = _stop_choice(varied)
    out = _details(varied, [PROMPT, OTHER], max_new_tokens=STEPS, stop=[token])
    assert out["outputs"] == [expected[:k], other]
    assert out["num_tokens"] == [k, STEPS]
    assert out["stop_reason"] == ["stop_token", "length"]

    # The padded outputs: the stopped row holds pad after its last token.
    gen = varied.generator(jit_compile=False)
    raw = gen.run(_prepare(gen, [PROMPT, OTHER], stop_ids=[token]), False)
    tok = varied.tokenizer
    padded = raw.token_ids.numpy()
    assert padded.shape[0] == 2 and padded.shape[1] >= STEPS
    assert padded[0, :k].tolist() == expected[:k]
    assert (padded[0, k:] == tok.pad_id).all()
    assert padded[1, :STEPS].tolist() == other

    # A one-character stop string, when the token is ASCII: matched on text,
    # so the ids keep the token that completed it.
    text = tok.detokenize([token]).numpy().decode("utf-8", "replace")
    if len(text) == 1 and ord(text) < 128:
        again = _details(varied, [PROMPT], max_new_tokens=STEPS, stop=[text])
        assert again["outputs"] == [expected[: k + 1]]
        assert again["stop_reason"] == ["stop_string"]


def _prepare(gen, rows, stop_ids=()):
    import tensorflow as tf

    from tflm.generation import spec

    values = {
        s.name: tf.fill([len(rows)], tf.constant(s.default, s.dtype))
        for s in spec.SPEC
    }
    values["max_new_tokens"] = tf.fill([len(rows)], STEPS)
    ids = list(stop_ids) + [-1] * (spec.MAX_STOP_IDS - len(stop_ids))
    return gen.prepare(
        tf.ragged.constant(rows, tf.int32),
        values,
        tf.fill([len(rows), spec.MAX_STOP_STRINGS], ""),
        tf.constant([ids] * len(rows), tf.int32),
    )


def test_end_of_text_stops_a_row(varied):
    expected, other = _greedy(varied, PROMPT), _greedy(varied, OTHER)
    k, token = _stop_choice(varied)
    eos = varied.tokenizer.eos_id
    # A copy whose output head swaps the end-of-text id with `token`: greedy
    # decoding now emits end-of-text exactly where it emitted `token`.
    lm = _build(tie_embeddings=False)
    lm.set_weights(varied.get_weights())
    head = lm.backbone.token_embedding.reverse_embeddings
    swapped = head.numpy()
    swapped[:, [eos, token]] = swapped[:, [token, eos]]
    head.assign(swapped)
    out = _details(lm, [PROMPT, OTHER], max_new_tokens=STEPS)
    assert out["outputs"] == [expected[:k], other]
    assert out["num_tokens"] == [k, STEPS]
    assert out["stop_reason"] == ["eos", "length"]
    # A row limited by length before its end-of-text says "length".
    out = _details(lm, [PROMPT], max_new_tokens=k)
    assert out["stop_reason"] == ["length"] and out["num_tokens"] == [k]


# Tracing


@pytest.mark.parametrize("jit_compile", [False, True])
def test_no_retrace_within_a_prompt_bucket(jit_compile):
    lm = _build()

    def run(length, **kwargs):
        ids = list(range(3, 3 + length))
        kwargs.setdefault("max_new_tokens", 8)
        lm.generate(ids, jit_compile=jit_compile, **kwargs)
        return lm.generator(jit_compile).trace_count

    first = run(9)  # prompt bucket 16, cache bucket 32
    assert first >= 1
    assert run(12) == first
    assert run(16, temperature=0.5, top_k=3, seed=5, max_new_tokens=10) == first
    assert run(20) > first  # prompt bucket 32
    assert len(lm._generators) == 1


# Streaming


@pytest.mark.parametrize(
    "settings",
    [{}, {"temperature": 1.0, "seed": 3}, {"temperature": 0.8, "chunk": 4}],
)
def test_stream_joins_to_generate(varied, settings):
    settings = dict(settings)
    chunk = settings.pop("chunk", 1)
    prompt = "Hello"
    pieces = list(varied.stream(prompt, 20, chunk=chunk, **settings))
    assert len(pieces) > 1
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == varied.generate(prompt, 20, **settings)


# Bad and edge input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": [0.0, float("nan")]}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": [0, -2]}, "top_k"),
        ({"max_new_tokens": -2}, "max_new_tokens"),
        ({"max_new_tokens": 4, "max_length": 9}, "max_length"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": [1.0, -1.0]}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"num_return_sequences": 0}, "num_return_sequences"),
        ({"num_return_sequences": [1, 2]}, "num_return_sequences"),
        ({"seed": [1, 2, 3]}, "seed"),
    ],
)
def test_bad_settings_raise(plain, kwargs, name):
    with pytest.raises(errors.InputError, match=name):
        plain.generate(["ab", "cd"], **{"max_new_tokens": 4, **kwargs})


def test_new_tokens_are_capped_at_the_room_the_prompt_leaves(varied, caplog):
    # The prompt is kept whole; the same rule as the export, never an error.
    prompt = [5, 6, 7]
    with caplog.at_level(logging.WARNING, logger="tflm"):
        out = _details(varied, prompt, max_new_tokens=500, jit_compile=False)
    assert out["num_tokens"] == [CONTEXT - 3]
    assert out["stop_reason"] == ["length"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert "capped" in messages[0] and "kept whole" in messages[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tflm"):
        fits = _details(
            varied, prompt, max_new_tokens=CONTEXT - 3, jit_compile=False
        )
    assert not caplog.records
    assert out["outputs"] == fits["outputs"]
    _details(varied, prompt, max_new_tokens=500, jit_compile=False)
    assert not caplog.records  # once per process (`tflm generate` batches)


def test_empty_batch_returns_empty_list(plain):
    assert plain.generate([]) == []
    assert plain.generate([], 5, jit_compile=False) == []


def test_empty_string_starts_from_end_of_text(varied):
    eos = varied.tokenizer.eos_id
    text = varied.generate("", STEPS, jit_compile=False)
    assert isinstance(text, str) and text
    ids = varied.generate([eos], STEPS, jit_compile=False)
    assert text == varied.tokenizer.detokenize(ids).numpy().decode(
        "utf-8", "replace"
    )
    assert varied.generate(["", "a"], STEPS, jit_compile=False)[0] == text


def test_empty_id_prompt_raises(plain):
    with pytest.raises(ValueError, match="empty"):
        plain.generate([[]])
    with pytest.raises(ValueError, match="empty"):
        plain.generate([[5, 6], []])
    with pytest.raises(ValueError, match="empty"):
        plain.generate(np.array([], np.int32))


def test_a_prompt_that_fills_the_context_is_cut_to_leave_one_token(
    varied, caplog
):
    ids = [int(i) for i in np.random.default_rng(1).integers(3, 259, 100)]
    with caplog.at_level(logging.WARNING, logger="tflm"):
        out = _details(varied, ids, max_new_tokens=8)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "cut from the left" in messages[0]
    assert out["num_tokens"] == [1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tflm"):
        fitted = _details(varied, ids[-(CONTEXT - 1) :], max_new_tokens=1)
    assert not caplog.records
    assert out["outputs"] == fitted["outputs"]


def test_text_without_tokenizer_raises(varied):
    lm = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=CONTEXT
    )
    assert lm.tokenizer is None
    for prompts in ("hi", ["hi", "there"]):
        with pytest.raises(ValueError, match="tokenizer"):
            lm.generate(prompts, 4)
    with pytest.raises(ValueError, match="tokenizer"):
        lm.generate([5, 6], 4, stop=["x"])
    # Ids need no tokenizer; the same prompt text works when one is passed.
    assert len(lm.generate([5, 6], 4, jit_compile=False)) == 4
    assert isinstance(
        lm.generate("hi", 4, tokenizer=ByteTokenizer(), jit_compile=False), str
    )


def test_bad_ids_and_stop_strings_raise(plain):
    with pytest.raises(errors.InputError, match="stop string"):
        plain.generate("hello", 4, stop=[""])
    with pytest.raises(errors.InputError, match="stop string"):
        plain.generate("hello", 4, stop=["x" * 65])
    with pytest.raises(errors.InputError, match="stop strings"):
        plain.generate("hello", 4, stop=[str(i) for i in range(9)])
    with pytest.raises(ValueError, match="Token ids"):
        plain.generate([5, 259], 4)
    with pytest.raises(ValueError, match="stop ids"):
        plain.generate("hello", 4, stop=list(range(3, 30)))


def test_rows_truncate_only_to_their_own_room(varied):
    # Row 0 asks for 1 new token, row 1 for CONTEXT - 2: row 0 keeps its whole
    # prompt and continues exactly as alone.
    ids = [int(i) for i in np.random.default_rng(2).integers(3, 259, 20)]
    both = _details(varied, [ids, [7]], max_new_tokens=[1, CONTEXT - 2])
    alone = _details(varied, [ids], max_new_tokens=1)
    assert both["outputs"][0] == alone["outputs"][0]
    assert both["num_tokens"] == [1, CONTEXT - 2]


def test_default_max_new_tokens_fits_a_short_context():
    lm = CausalLM.from_preset("tiny")  # context 16
    out = lm.generate([[1, 2]], return_details=True, jit_compile=False)
    assert out["num_tokens"] == [14]


def test_seed_out_of_range_raises(plain):
    with pytest.raises(ValueError, match="seed"):
        plain.generate([5, 6], 2, seed=2**31, jit_compile=False)


def test_stream_rejects_bad_chunk_and_unknown_settings(plain):
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="chunk"):
        list(plain.stream("hi", 3, chunk=0, tokenizer=tok))
    with pytest.raises(TypeError):
        list(plain.stream("hi", 3, temprature=0.5, tokenizer=tok))


def test_tensor_of_ids_is_one_prompt(plain):
    import tensorflow as tf

    ids = [5, 6, 7]
    expected = plain.generate(ids, 4, jit_compile=False)
    assert plain.generate(tf.constant(ids), 4, jit_compile=False) == expected


@pytest.mark.parametrize("prompt", ["Hello", "你好，世界", "🙂🚀 ok"])
def test_stream_joins_to_generate_for_multibyte_text(varied, prompt):
    settings = dict(temperature=1.5, seed=4, repetition_penalty=1.2)
    pieces = list(varied.stream(prompt, 24, chunk=3, **settings))
    whole = varied.generate(prompt, 24, jit_compile=False, **settings)
    assert "".join(pieces) == whole
    # A piece never ends inside a character (no piece ends in U+FFFD unless
    # the whole text has it there).
    assert all(p for p in pieces)


def test_stream_honours_stop_strings(varied):
    settings = dict(temperature=1.5, seed=2)
    full = varied.generate("Hi", 30, jit_compile=False, **settings)
    ids = varied.generate(
        "Hi", 30, jit_compile=False, return_details=True, **settings
    )["token_ids"][0]
    raw = bytes(i - 3 for i in ids)
    for k in range(2, len(raw) - 3):
        stop = raw[k : k + 3]
        try:
            text = stop.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if stop not in raw[: k + 2]:
            break
    else:
        pytest.skip("no usable stop string in the sampled text")
    stopped = varied.generate(
        "Hi", 30, jit_compile=False, stop=[text], **settings
    )
    assert len(stopped) < len(full) and text not in stopped
    pieces = list(varied.stream("Hi", 30, stop=[text], **settings))
    assert "".join(pieces) == stopped


def test_num_return_sequences_in_process(varied):
    out = varied.generate(
        "Hey", 12, temperature=2.0, seed=10, num_return_sequences=3,
        jit_compile=False,
    )  # fmt: skip
    assert len(out) == 3 and len(set(out)) == 3
    for j in range(3):
        assert out[j] == varied.generate(
            "Hey", 12, temperature=2.0, seed=10 + j, jit_compile=False
        )
