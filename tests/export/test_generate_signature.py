"""The full-control `generate` signature under TF Serving's conditions:
the same outputs as `CausalLM.generate` for every control, and bad input
fails with an `InvalidArgument` that names the input."""

import pytest
import serving_helpers as helpers

# One row per control (and a few together); each row alone in-process.
ROWS = [
    {"prompt": "To be, or not", "max_new_tokens": 12},
    {"prompt": "héllo", "max_length": 14},  # 6 bytes: 8 new tokens
    {"prompt": "the cat", "max_new_tokens": 10, "repetition_penalty": 1.3},
    {"prompt": "abab", "max_new_tokens": 12, "no_repeat_ngram_size": 2},
    {"prompt": "once", "max_new_tokens": 9, "min_new_tokens": 5},
    {
        "prompt": "x",
        "max_new_tokens": 16,
        "temperature": 0.9,
        "top_k": 20,
        "top_p": 0.9,
        "seed": 7,
        "repetition_penalty": 0.8,
        "no_repeat_ngram_size": 3,
    },
    {"prompt": "", "max_new_tokens": 6, "temperature": 1.0, "seed": 3},
]
SAMPLES = [
    {"prompt": p, "max_new_tokens": 10, "temperature": 2.0, "seed": s}
    for p, s in (("Hello", 5), ("🙂 ok", 9))
]
BAD = [
    ("num_return_sequences", {"num_return_sequences": 0}),
    ("repetition_penalty", {"repetition_penalty": 0.0}),
    ("repetition_penalty", {"repetition_penalty": -2.0}),
    ("no_repeat_ngram_size", {"no_repeat_ngram_size": -1}),
    ("min_new_tokens", {"min_new_tokens": -1}),
    ("max_length", {"max_new_tokens": 4, "max_length": 9}),
    ("stop", {"stop": [str(i) for i in range(9)]}),
    ("stop", {"stop": ["x" * 65]}),
    ("stop_ids", {"stop_ids": list(range(3, 20))}),
]


def _in_process(row, **extra):
    kwargs = {k: v for k, v in row.items() if k not in ("prompt", "stop_ids")}
    stop = kwargs.pop("stop", []) + row.get("stop_ids", [])
    return helpers.byte_model().generate(
        row["prompt"],
        stop=stop,
        return_details=True,
        jit_compile=False,
        **kwargs,
        **extra,
    )


def _stop_rows():
    """Rows with a stop string of three tokens (bytes) from the greedy
    text, first found at tokens `k .. k + 2`."""
    rows = []
    for seed, prompt in enumerate(("To be, or not", "the cat", "héllo")):
        base = {
            "prompt": prompt,
            "max_new_tokens": 20,
            "temperature": 1.0,
            "seed": seed,
        }
        ids = _in_process(base)["token_ids"][0]
        raw = bytes(i - 3 for i in ids)
        for k in range(2, len(ids) - 3):
            stop = raw[k : k + 3]
            if _utf8(stop) and stop not in raw[: k + 2]:
                rows.append(
                    {
                        **base,
                        "stop": ["never there", stop.decode()],
                        "_ids": ids,
                        "_k": k,
                    }
                )
                break
    assert rows, "no UTF-8 three-token window in the greedy texts"
    return rows


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture(scope="module")
def served():
    stop_rows = _stop_rows()
    bad = []
    for _, change in BAD:
        row = {"prompt": "a", "max_new_tokens": 3, **change}
        if "max_length" in change:
            row["max_new_tokens"] = change["max_new_tokens"]
        bad.append(helpers.full_request([row]))
    mixed = helpers.full_request(
        [{"prompt": "a", "num_return_sequences": n} for n in (1, 2)]
    )
    clean = [_clean(r) for r in stop_rows]
    requests = [
        helpers.full_request(ROWS),
        helpers.full_request(
            [{**r, "num_return_sequences": 3} for r in SAMPLES]
        ),
        helpers.full_request(clean),
        mixed,
        *bad,
    ]
    report = helpers.serving_check(helpers.byte_export(), requests, True)
    return report["results"], stop_rows, report


def _clean(row):
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _texts(outputs):
    return [
        helpers.as_bytes(t).decode("utf-8", "replace") for t in outputs["text"]
    ]


def test_every_control_matches_in_process(served):
    results, _, report = served
    outputs = results[0]["outputs"]
    assert [w for w in report["warmup"] if "error" in w] == []
    for i, row in enumerate(ROWS):
        alone = _in_process(row)
        assert _texts(outputs)[i] == alone["outputs"], row
        n = outputs["num_tokens"][i]
        assert [n] == alone["num_tokens"]
        assert outputs["token_ids"][i][:n] == alone["token_ids"][0]
        assert outputs["stop_reason"][i] == alone["stop_reason"][0]
    # The controls did something: max_length gave 8 tokens, min_new_tokens
    # held, and each penalty changed the greedy text.
    if outputs["stop_reason"][1] == "length":
        assert outputs["num_tokens"][1] == 14 - len("héllo".encode())
    assert outputs["num_tokens"][4] >= 5
    for i in (2, 3):
        plain = {k: v for k, v in ROWS[i].items() if k in ("prompt",)}
        plain["max_new_tokens"] = ROWS[i]["max_new_tokens"]
        assert _in_process(plain)["outputs"] != _texts(outputs)[i]


def test_no_repeat_ngram_size_2_repeats_no_bigram(served):
    results, _, _ = served
    outputs = results[0]["outputs"]
    ids = list(b"abab") + [
        i - 3 for i in outputs["token_ids"][3][: outputs["num_tokens"][3]]
    ]
    bigrams = list(zip(ids, ids[1:], strict=False))
    # Each new token's bigram is new (the prompt repeats one of its own).
    for t in range(3, len(bigrams)):
        assert bigrams[t] not in bigrams[:t], (t, bigrams)
    assert len(bigrams) > 6


def test_num_return_sequences_gives_distinct_reproducible_samples(served):
    results, _, _ = served
    outputs = results[1]["outputs"]
    assert outputs["prompt_index"] == [0, 0, 0, 1, 1, 1]
    texts = _texts(outputs)
    for p, row in enumerate(SAMPLES):
        mine = texts[3 * p : 3 * p + 3]
        assert len(set(mine)) == 3
        local = _in_process(row, num_return_sequences=3)["outputs"]
        assert local == mine
        # Copy j is the one sample of seed + j.
        for j in range(3):
            alone = _in_process({**row, "seed": row["seed"] + j})
            assert alone["outputs"] == mine[j]


def test_a_three_token_stop_string_stops_there(served):
    results, stop_rows, _ = served
    outputs = results[2]["outputs"]
    for i, row in enumerate(stop_rows):
        ids, k = row["_ids"], row["_k"]
        assert outputs["stop_reason"][i] == "stop_string"
        assert outputs["num_tokens"][i] == k + 3
        assert outputs["token_ids"][i][: k + 3] == ids[: k + 3]
        before = helpers.byte_model().tokenizer.detokenize(ids[:k]).numpy()
        assert helpers.as_bytes(outputs["text"][i]) == before
        local = _in_process(_clean(row))
        assert local["outputs"] == _texts(outputs)[i]
        assert local["num_tokens"] == [k + 3]


def test_bad_input_fails_naming_the_input(served):
    results, _, _ = served
    error = results[3].get("error")
    assert error and "num_return_sequences" in error["message"]
    for (name, _), result in zip(BAD, results[4:], strict=True):
        error = result.get("error")
        assert error is not None, name
        assert error["code"] == "InvalidArgumentError"
        assert name in error["message"], error["message"]
