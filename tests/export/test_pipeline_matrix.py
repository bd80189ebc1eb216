"""Every exported signature against the in-process pipeline, for a model
with a template and one without.

Each model is exported once and its export is loaded the TF Serving way
once: one fresh process (`tflm/export/serving_check.py`: XLA disabled, a TF1
`Session`, `saved_model.loader.load`) runs every request of the matrix. Each
served answer must equal the in-process call with the same settings and
seeds: generated text and token ids exactly (greedy, sampled with
`top_k`/`top_p`, stop strings, several sequences, beam search with its
scores to 1e-5, conversations), `score` to 1e-4 of a log-likelihood taken
from `model(...)`'s logits, `tokenize`/`detokenize` as `model.tokenizer`.
The templated model's `beam_search` is also checked against the template's
ids: the served beam search once tokenized the bare prompt.

The in-process generator's traces are bounded too: a second round of mixed
calls (batch sizes, settings, beams) traces nothing new.

Time: each model is saved to a model directory and loaded back in-process;
a background process exports that directory and then serves the export
(in a fresh process), beside the in-process work.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import serving_helpers as helpers
import tensorflow as tf

from tflm.generation import spec
from tflm.models import model_dir
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import template_render
from tflm.tokenizers import templates

KINDS = ("templated", "plain")
SERVED_TIMEOUT = 300

# `serving_default`: (prompt, max_new_tokens, temperature, top_k, top_p,
# seed); greedy rows and sampled ones with each filter.
DEFAULT_ROWS = [
    ("To be, or", 8, 0.0, 0, 1.0, 0),
    ("héllo 🙂", 10, 0.9, 20, 0.9, 7),
    ("the cat sat", 9, 1.3, 0, 1.0, 3),
    ("x", 6, 0.7, 5, 0.5, 11),
]
# `generate` with stop strings (found in the first row's text, see
# `_stop_strings`), the same for every row as in-process takes them.
STOP_ROWS = [
    {"prompt": "To be, or", "temperature": 1.0, "seed": 5},
    {"prompt": "héllo 🙂", "temperature": 0.8, "top_k": 12, "seed": 1},
    {"prompt": "the cat sat", "temperature": 1.2, "top_p": 0.8, "seed": 9},
    {"prompt": "ok", "temperature": 0.0},
]
STOP_MAX_NEW = 14
# `generate` with several sequences a prompt (copy j samples seed + j).
SEQUENCES = 2
MULTI_ROWS = [
    {"prompt": "Once", "temperature": 0.9, "top_k": 30, "seed": 4},
    {"prompt": "a b c d e", "temperature": 1.1, "top_p": 0.9, "seed": 8},
]
MULTI_MAX_NEW = 7
SAMPLING = ("temperature", "top_k", "top_p", "seed")
BEAM_PROMPTS = ["To be, or", "héllo 🙂"]
BEAMS = {"max_new_tokens": 8, "num_beams": 3, "num_return_sequences": 2}
CHATS = [
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "héllo"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "and?"},
    ],
    [
        {"role": "system", "content": "Rhyme."},
        {"role": "user", "content": "the cat"},
    ],
]
# Per conversation, `spec.SERVING_DEFAULT`: max_new_tokens, temperature,
# top_k, top_p, seed (greedy, then sampled with each filter).
CHAT_SETTINGS = [(8, 0.0, 0, 1.0, 0), (9, 1.0, 20, 0.9, 2), (7, 1.5, 0, 0.7, 6)]
SCORE_TEXTS = ["To be, or not to be", "héllo 🙂", "", "x" * 80, "a"]
TOKENIZE_TEXTS = ["To be", "héllo 🙂", "", "y" * 70]
# Rows of `detokenize`: (text, num_tokens); "héllo" cut after 2 ids ends
# in half of "é" (not UTF-8); 0 ids is "".
DETOKENIZE_ROWS = [("To be", 5), ("héllo 🙂", 2), ("héllo 🙂", 11), ("abc", 0)]

# Exports a model directory, then serves the export in a fresh process
# (serving_check prints the report: the last line of stdout).
EXPORT_AND_SERVE = textwrap.dedent(
    """
    import subprocess, sys
    from tflm import export
    from tflm.models.causal_lm import CausalLM
    model_path, base, serving_check, requests = sys.argv[1:]
    path = export.export(CausalLM.from_preset(model_path), base)
    sys.stdout.flush()
    args = [sys.executable, serving_check, path, "--requests", requests]
    sys.exit(subprocess.run(args).returncode)
    """
)


# Serving ---------------------------------------------------------------------
class Served:
    """A background process whose last stdout line is serving_check's
    report; `report()` waits for it."""

    def __init__(self, args: list, requests: list):
        directory = tempfile.mkdtemp(prefix="matrix-", dir=helpers.workdir())
        self.requests = os.path.join(directory, "requests.json")
        with open(self.requests, "w") as f:
            json.dump(requests, f)
        self._out = open(os.path.join(directory, "stdout"), "w+")
        self._err = open(os.path.join(directory, "stderr"), "w+")
        self._process = subprocess.Popen(
            [sys.executable, *args, self.requests],
            stdout=self._out,
            stderr=self._err,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            cwd=helpers.ROOT,
            start_new_session=True,  # its own group: `close` ends it whole
        )
        self._report = None

    def report(self) -> dict:
        if self._report is None:
            code = self._process.wait(timeout=SERVED_TIMEOUT)
            self._out.seek(0)
            self._err.seek(0)
            lines = self._out.read().strip().splitlines()
            assert code == 0 and lines, self._err.read()[-4000:]
            self._report = json.loads(lines[-1])
        return self._report

    def close(self):
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._out.close()
        self._err.close()


@dataclasses.dataclass
class Case:
    """One model, its requests by name and the served answers."""

    lm: CausalLM
    stop: list
    names: list
    served: Served | None = None

    def outputs(self, name: str) -> dict:
        result = self.served.report()["results"][self.names.index(name)]
        assert "error" not in result, (name, result.get("error"))
        return result["outputs"]


def _texts(outputs) -> list[str]:
    return [
        helpers.as_bytes(t).decode("utf-8", "replace") for t in outputs["text"]
    ]


def _stop_strings(lm) -> list[str]:
    """A two-token stop string from the first stop row's text (sampled
    without stops), and one that never occurs."""
    ids = _in_process_stop_rows(lm, stop=None)["token_ids"][0]
    for k in range(1, len(ids) - 2):
        window = ids[k : k + 2]
        if min(window) < 3:  # a special id: no text
            continue
        try:
            return [bytes(i - 3 for i in window).decode("utf-8"), "§never§"]
        except UnicodeDecodeError:
            continue
    raise AssertionError(f"no UTF-8 two-byte window in {ids}")


def _requests(lm, stop: list) -> dict:
    """The matrix's requests by name (TF Serving REST bodies)."""
    requests = {"serving_default": helpers.columnar(DEFAULT_ROWS)}
    stop_rows = [
        {**r, "max_new_tokens": STOP_MAX_NEW, "stop": stop} for r in STOP_ROWS
    ]
    requests["generate_stop"] = helpers.full_request(stop_rows)
    multi = [
        {
            **r,
            "max_new_tokens": MULTI_MAX_NEW,
            "num_return_sequences": SEQUENCES,
        }
        for r in MULTI_ROWS
    ]
    requests["generate_multi"] = helpers.full_request(multi)
    requests["beam_search"] = helpers.beam_request(
        [{"prompt": p, **BEAMS} for p in BEAM_PROMPTS]
    )
    if lm.template is not None:
        requests["chat"] = _chat_body(CHATS, CHAT_SETTINGS)
    requests["score"] = {
        "signature_name": "score",
        "inputs": {"text": SCORE_TEXTS},
    }
    requests["tokenize"] = {
        "signature_name": "tokenize",
        "inputs": {"text": TOKENIZE_TEXTS},
    }
    ids, counts = _detokenize_inputs(lm.tokenizer)
    requests["detokenize"] = {
        "signature_name": "detokenize",
        "inputs": {"token_ids": ids, "num_tokens": counts},
    }
    return requests


def _chat_body(chats, settings) -> dict:
    width = max(len(c) for c in chats)
    pad = [{"role": "", "content": ""}]
    rows = [c + pad * (width - len(c)) for c in chats]
    inputs = {
        "role": [[t["role"] for t in r] for r in rows],
        "content": [[t["content"] for t in r] for r in rows],
    }
    columns = zip(*settings, strict=True)
    for name, column in zip(spec.SERVING_DEFAULT, columns, strict=True):
        inputs[name] = list(column)
    return {"signature_name": "chat", "inputs": inputs}


def _detokenize_inputs(tokenizer):
    rows = [tokenizer.tokenize(t).numpy().tolist() for t, _ in DETOKENIZE_ROWS]
    width = max(len(r) for r in rows)
    # Ids past num_tokens are never read (here: those of "z").
    z = int(tokenizer.tokenize("z").numpy()[0])
    padded = [r + [z] * (width - len(r)) for r in rows]
    return padded, [n for _, n in DETOKENIZE_ROWS]


def _case(lm) -> tuple[Case, list]:
    """The case of `lm` (not served yet) and its requests."""
    stop = _stop_strings(lm)
    requests = _requests(lm, stop)
    return Case(lm, stop, list(requests)), list(requests.values())


def _model(kind: str) -> tuple[str, CausalLM]:
    """The byte model saved (`templated`: with the template, as the chat
    export tests make it) and loaded back: `(model directory, model)`."""
    path = os.path.join(helpers.workdir(), f"matrix_{kind}_model")
    lm = helpers.byte_model()
    metadata = {"template": templates.TEMPLATE} if kind == "templated" else None
    model_dir.save(lm, lm.tokenizer, path, metadata=metadata)
    return path, CausalLM.from_preset(path)


@pytest.fixture(scope="module")
def cases():
    """Both models, each exported once and served once, in the background
    (one process a model: the export, then serving_check in a fresh one)."""
    built = {}
    try:
        for kind in KINDS:
            path, lm = _model(kind)
            assert lm.template == (
                templates.TEMPLATE if kind == "templated" else None
            )
            case, requests = _case(lm)
            base = os.path.join(helpers.workdir(), f"matrix_{kind}")
            args = ["-c", EXPORT_AND_SERVE, path, base, helpers.SERVING_CHECK]
            case.served = Served(args, requests)
            built[kind] = case
        yield built
    finally:
        for case in built.values():
            case.served.close()


# In-process ------------------------------------------------------------------
def _generate(lm, prompts, **settings) -> dict:
    return lm.generate(
        prompts, jit_compile=False, return_details=True, **settings
    )


def _columns(rows, names) -> dict:
    """Per-row settings (defaults filled in) as lists, by name."""
    defaults = helpers.FULL_DEFAULTS
    return {n: [r.get(n, defaults[n]) for r in rows] for n in names}


def _in_process_stop_rows(lm, stop) -> dict:
    return _generate(
        lm,
        [r["prompt"] for r in STOP_ROWS],
        max_new_tokens=STOP_MAX_NEW,
        stop=stop,
        **_columns(STOP_ROWS, SAMPLING),
    )


def _served_ids(outputs) -> list:
    return [
        row[:n]
        for row, n in zip(
            outputs["token_ids"], outputs["num_tokens"], strict=True
        )
    ]


def _assert_same_generation(outputs, local, rows: int):
    """Served outputs equal `generate(..., return_details=True)`'s."""
    assert len(local["outputs"]) == rows == len(outputs["text"])
    assert _texts(outputs) == local["outputs"]
    assert outputs["num_tokens"] == local["num_tokens"]
    assert outputs["stop_reason"] == local["stop_reason"]
    assert _served_ids(outputs) == local["token_ids"]
    if "prompt_index" in outputs:
        assert outputs["prompt_index"] == local["prompt_index"]


def _log_likelihood(lm, text: str) -> tuple[float, int]:
    """Log-likelihood of `text` after an end-of-text id, from the logits of
    one `model(...)` call (the ids cut to the context)."""
    tokenizer = lm.tokenizer
    context = lm.backbone.max_sequence_length
    ids = tokenizer.tokenize(text).numpy().tolist()[: context - 1]
    ids = np.asarray([[tokenizer.eos_id, *ids]], np.int32)
    logits = lm({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    log_probs = tf.nn.log_softmax(tf.cast(logits[0, :-1], tf.float64)).numpy()
    picked = log_probs[np.arange(ids.shape[1] - 1), ids[0, 1:]]
    return float(picked.sum()), ids.shape[1] - 1


# Traces (first: in-process work, beside the exports and serving) -------------
TRACE_PROMPTS = ["a", "To be, or not", "héllo 🙂 wörld", "the cat sat", "xy z"]
# (prompts, settings): batch sizes 1, 2, 3, 5, each setting kind.
TRACE_CALLS = [
    (1, {"max_new_tokens": 5}),
    (2, {"max_new_tokens": 6, "temperature": 0.9, "top_k": 10, "top_p": 0.9}),
    (3, {"max_new_tokens": 6, "temperature": 1.0, "stop": ["zz", "\n"]}),
    (5, {"max_new_tokens": 5, "num_beams": 3, "num_return_sequences": 2}),
]


def _round(lm, variant: int):
    """The mixed calls, then conversations (with a template). `variant`
    changes the prompts' characters and the seeds, not their lengths."""
    prompts = [p.replace("a", "ae"[variant]) for p in TRACE_PROMPTS]
    for size, settings in TRACE_CALLS:
        if "num_beams" not in settings:
            settings = {**settings, "seed": variant}
        lm.generate(prompts[:size], jit_compile=False, **settings)
    if lm.template is not None:
        settings = {**TRACE_CALLS[1][1], "seed": variant}
        lm.generate(CHATS[1:], jit_compile=False, **settings)


@pytest.mark.parametrize("kind", KINDS)
def test_traces_are_bounded(cases, kind):
    lm = cases[kind].lm
    generator = lm.generator(jit_compile=False)
    start = generator.trace_count
    _round(lm, 0)
    first = generator.trace_count
    # Per call at most a loop (or beam search) and a finish, plus a
    # prepare per prompt form.
    calls = len(TRACE_CALLS) + (lm.template is not None)
    assert first - start <= 2 * calls + 2
    _round(lm, 0)
    assert generator.trace_count == first, "an identical round traced again"
    _round(lm, 1)
    assert generator.trace_count == first, "new values of one shape traced"


# The matrix ------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_serving_default_matches_in_process(cases, kind):
    case = cases[kind]
    local = helpers.generate(case.lm, DEFAULT_ROWS, jit_compile=False)
    _assert_same_generation(
        case.outputs("serving_default"), local, len(DEFAULT_ROWS)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_generate_with_stop_strings_matches_in_process(cases, kind):
    case = cases[kind]
    local = _in_process_stop_rows(case.lm, case.stop)
    # The stop string was met (it is in row 0's text without stops).
    assert local["stop_reason"][0] == "stop_string", local
    outputs = case.outputs("generate_stop")
    _assert_same_generation(outputs, local, len(STOP_ROWS))
    assert case.stop[0] not in _texts(outputs)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_generate_several_sequences_matches_in_process(cases, kind):
    case = cases[kind]
    local = _generate(
        case.lm,
        [r["prompt"] for r in MULTI_ROWS],
        max_new_tokens=MULTI_MAX_NEW,
        num_return_sequences=SEQUENCES,
        **_columns(MULTI_ROWS, SAMPLING),
    )
    outputs = case.outputs("generate_multi")
    _assert_same_generation(outputs, local, SEQUENCES * len(MULTI_ROWS))
    assert outputs["prompt_index"] == [0, 0, 1, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_beam_search_matches_in_process(cases, kind):
    case = cases[kind]
    local = _generate(case.lm, BEAM_PROMPTS, **BEAMS)
    outputs = case.outputs("beam_search")
    rows = BEAMS["num_return_sequences"] * len(BEAM_PROMPTS)
    _assert_same_generation(outputs, local, rows)
    assert outputs["prompt_index"] == [0, 0, 1, 1]
    np.testing.assert_allclose(
        outputs["score"], local["score"], rtol=1e-5, atol=1e-5
    )
    for p in range(len(BEAM_PROMPTS)):
        scores = outputs["score"][2 * p : 2 * p + 2]
        assert scores == sorted(scores, reverse=True)


def test_templated_beam_search_applies_the_template(cases):
    """Served beams are those of the template's ids, not of the bare
    prompt's (which the served beam search once took)."""
    case = cases["templated"]
    lm, tokenizer = case.lm, case.lm.tokenizer
    rendered = [
        template_render.encode_prompt(
            [{"role": "user", "content": p}], tokenizer
        ).tolist()
        for p in BEAM_PROMPTS
    ]
    by_template = _generate(lm, rendered, **BEAMS)
    bare = [tokenizer.tokenize(p).numpy().tolist() for p in BEAM_PROMPTS]
    by_bare = _generate(lm, bare, **BEAMS)
    outputs = case.outputs("beam_search")
    assert _served_ids(outputs) == by_template["token_ids"]
    np.testing.assert_allclose(
        outputs["score"], by_template["score"], rtol=1e-5, atol=1e-5
    )
    assert by_bare["token_ids"] != by_template["token_ids"]


def test_chat_matches_in_process(cases):
    case = cases["templated"]
    outputs = case.outputs("chat")
    assert sorted(outputs) == sorted(spec.OUTPUTS["chat"])
    texts = _texts(outputs)
    rows = zip(CHATS, CHAT_SETTINGS, strict=True)
    for i, (conversation, row) in enumerate(rows):
        controls = dict(zip(spec.SERVING_DEFAULT, row, strict=True))
        local = _generate(case.lm, [conversation], **controls)
        assert texts[i] == local["outputs"][0], (i, controls)
        assert outputs["num_tokens"][i] == local["num_tokens"][0]
        assert outputs["stop_reason"][i] == local["stop_reason"][0]


@pytest.mark.parametrize("kind", KINDS)
def test_score_matches_the_logits(cases, kind):
    case = cases[kind]
    local = [_log_likelihood(case.lm, t) for t in SCORE_TEXTS]
    outputs = case.outputs("score")
    assert outputs["num_tokens"] == [n for _, n in local]
    np.testing.assert_allclose(
        outputs["log_likelihood"], [ll for ll, _ in local], rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("kind", KINDS)
def test_tokenize_and_detokenize_match_the_tokenizer(cases, kind):
    case = cases[kind]
    tokenizer = case.lm.tokenizer
    context = case.lm.backbone.max_sequence_length
    outputs = case.outputs("tokenize")
    for i, text in enumerate(TOKENIZE_TEXTS):
        want = tokenizer.tokenize(text).numpy().tolist()[:context]
        n = outputs["num_tokens"][i]
        assert n == len(want)
        assert outputs["token_ids"][i][:n] == want
        assert set(outputs["token_ids"][i][n:]) <= {tokenizer.pad_id}
    outputs = case.outputs("detokenize")
    ids, counts = _detokenize_inputs(tokenizer)
    want = [
        tokenizer.detokenize(tf.constant(r[:n], tf.int32)).numpy()
        for r, n in zip(ids, counts, strict=True)
    ]
    assert [helpers.as_bytes(t) for t in outputs["text"]] == want
    assert want[1] == "hé".encode()[:2] and want[3] == b""


@pytest.mark.parametrize("kind", KINDS)
def test_served_as_tf_serving_with_the_contract(cases, kind):
    report = cases[kind].served.report()
    assert report["xla_disabled"] and report["unknown_ops"] == []
    want = [n for n in spec.SIGNATURES if kind == "templated" or n != "chat"]
    assert sorted(report["signatures"]) == sorted(want)
    for name in want:
        signature = report["signatures"][name]
        assert sorted(signature["inputs"]) == sorted(spec.SIGNATURES[name])
        if name in spec.OUTPUTS:
            assert sorted(signature["outputs"]) == sorted(spec.OUTPUTS[name])
