"""Requests where no row produces a token, under TF Serving's conditions:
`max_new_tokens=0`, `max_length` shorter than the prompt, a batch of 0 rows
(every signature), and a fine-tuned model whose reply starts with its end
id. Each answers empty replies (reason `length` or `eos`), never an error;
`tflm export` of that model replays its warm-up before publishing it and
lists the signatures it wrote."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import serving_helpers as helpers

from tflm import cli
from tflm.models import model_dir
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import ByteTokenizer
from tflm.tokenizers import templates

# Loads each export as TF Serving does (XLA disabled, TF1 session) and runs
# arrays of exact shapes (a batch of 0 rows has no REST form for `[B, W]`
# inputs); prints each result's outputs or error, and the signature names.
_RUN = """
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("check", sys.argv[1])
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)
assert check.disable_xla()["xla_disabled"]
import tensorflow_text  # noqa: F401
report = []
for path, requests in json.loads(sys.argv[2]):  # [[path, requests], ...]
    server = check.Server(path)
    results = []
    for signature, inputs in requests:
        arrays = {
            name: np.array(value, "bytes" if dtype == "string" else dtype)
            .reshape(shape)
            for name, (dtype, shape, value) in inputs.items()
        }
        try:
            outputs = server.run(signature, arrays)["outputs"]
        except Exception as e:  # noqa: BLE001
            results.append({"error": f"{type(e).__name__}: {e}"[:2000]})
            continue
        results.append({
            name: {"dtype": str(v.dtype), "shape": list(v.shape),
                   "value": check.to_json(v)}
            for name, v in outputs.items()
        })
    report.append({"signatures": sorted(server.signatures), "results": results})
print(json.dumps(report))
"""

SAMPLING = dict(max_new_tokens=4, temperature=0.0, top_k=0, top_p=1.0, seed=0)
INT = {"max_new_tokens", "top_k", "seed", "max_length", "min_new_tokens"}
INT |= {"no_repeat_ngram_size", "num_return_sequences", "num_beams"}
PROMPT = "Hello world"


def _columns(n: int, defaults: dict, **settings) -> dict:
    inputs = {}
    for name, default in defaults.items():
        value = settings.get(name, default)
        dtype = "int32" if name in INT else "float32"
        dtype = "bool" if isinstance(value, bool) else dtype
        inputs[name] = (dtype, [n], [value] * n)
    return inputs


def serving_default(prompts, **settings) -> tuple:
    inputs = {"prompt": ("string", [len(prompts)], prompts)}
    inputs.update(_columns(len(prompts), SAMPLING, **settings))
    return "serving_default", inputs


def generate(prompts, stop=("\n\n", ""), stop_ids=(5, -1), **settings):
    n = len(prompts)
    inputs = {"prompt": ("string", [n], prompts)}
    inputs.update(_columns(n, helpers.FULL_DEFAULTS, **settings))
    inputs["stop"] = ("string", [n, len(stop)], [list(stop)] * n)
    inputs["stop_ids"] = ("int32", [n, len(stop_ids)], [list(stop_ids)] * n)
    return "generate", inputs


def beam_search(prompts, **settings) -> tuple:
    beams = {**helpers.BEAM_DEFAULTS, "num_beams": 2}
    inputs = {"prompt": ("string", [len(prompts)], prompts)}
    inputs.update(_columns(len(prompts), beams, **settings))
    return "beam_search", inputs


def chat(n, turns=1, **settings) -> tuple:
    inputs = {
        "role": ("string", [n, turns], [["user"] * turns] * n),
        "content": ("string", [n, turns], [["Hello"] * turns] * n),
    }
    inputs.update(_columns(n, SAMPLING, **settings))
    return "chat", inputs


EMPTY = {
    "serving_default": serving_default([]),
    "generate": generate([]),
    "generate_no_stops": generate([], stop=(), stop_ids=()),
    "beam_search": beam_search([]),
    "score": ("score", {"text": ("string", [0], [])}),
    "tokenize": ("tokenize", {"text": ("string", [0], [])}),
    "detokenize": (
        "detokenize",
        {
            "token_ids": ("int32", [0, 3], []),
            "num_tokens": ("int32", [0], []),
        },
    ),
}
# Name -> (request, rows, the reason every row ends with).
NO_TOKEN = {
    "serving_default_max_new_tokens_0": (
        serving_default([PROMPT, ""], max_new_tokens=0),
        2,
        "length",
    ),
    "generate_max_new_tokens_0": (
        generate([PROMPT, ""], max_new_tokens=0),
        2,
        "length",
    ),
    "generate_max_length_below_the_prompt": (
        generate([PROMPT], max_length=3, num_return_sequences=2),
        2,
        "length",
    ),
    "beam_search_max_new_tokens_0": (
        beam_search([PROMPT, ""], max_new_tokens=0),
        2,
        "length",
    ),
    "beam_search_max_length_below_the_prompt": (
        beam_search([PROMPT], max_length=3),
        1,
        "length",
    ),
}
# On the model whose reply starts with its end id.
EOS_FIRST = {
    "serving_default": (serving_default([PROMPT, ""]), 2, "eos"),
    "generate_greedy": (generate([PROMPT], max_new_tokens=4), 1, "eos"),
    "generate_sampled": (
        generate([PROMPT], temperature=1.0, seed=3, num_return_sequences=2),
        2,
        "eos",
    ),
    "beam_search": (beam_search([PROMPT], max_new_tokens=4), 1, "eos"),
    "chat": (chat(2, turns=2), 2, "eos"),
    "chat_max_new_tokens_0": (chat(1, max_new_tokens=0), 1, "length"),
}
EMPTY_CHAT = {
    "chat": chat(0),
    "chat_no_turns": chat(0, turns=0),
}


def _eos_first_model() -> CausalLM:
    """A templated byte model whose most likely next id is always its end
    id: the final norm's output is the end id's (enlarged) embedding."""
    lm = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=helpers.CONTEXT
    )
    tokenizer = ByteTokenizer()
    table = lm.backbone.get_layer("token_embedding").embeddings
    rows = table.numpy()
    rows[tokenizer.eos_id] *= 100.0
    table.assign(rows)
    norm = lm.backbone.get_layer("final_norm")
    norm.gamma.assign(np.zeros(norm.gamma.shape, "float32"))
    norm.beta.assign(rows[tokenizer.eos_id])
    lm.tokenizer = tokenizer
    return lm


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`tflm export` of the eos-first model: its exit code, output, path."""
    root = tmp_path_factory.mktemp("eos_first")
    lm = _eos_first_model()
    directory = str(root / "model")
    model_dir.save(
        lm, lm.tokenizer, directory, metadata={"template": templates.TEMPLATE}
    )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["export", directory, "--out", str(root / "serving")])
    path = str(root / "serving" / "1")
    return code, out.getvalue(), err.getvalue(), path


@pytest.fixture(scope="module")
def served(exported):
    """Every request on the eos-first export, under TF Serving's
    conditions: `{name: result}` and the export's signature names."""
    requests = {
        **EMPTY,
        **EMPTY_CHAT,
        **{k: v[0] for k, v in NO_TOKEN.items()},
        **{f"eos_{k}": v[0] for k, v in EOS_FIRST.items()},
    }
    jobs = [[exported[3], list(requests.values())]]
    (report,) = helpers.run_python(
        ["-c", _RUN, helpers.SERVING_CHECK, json.dumps(jobs)]
    )
    results = dict(zip(requests, report["results"], strict=True))
    return results, report["signatures"]


def _outputs(result: dict) -> dict:
    assert "error" not in result, result["error"]
    return result


def test_export_of_the_eos_first_model_replays_and_lists_what_it_wrote(
    exported, served
):
    code, out, err, path = exported
    assert code == 0, err
    assert os.path.isdir(path)
    listed = out.split("signatures: ")[1].splitlines()[0].split(", ")
    assert sorted(listed) == served[1]
    assert len(listed) == 7 and listed[0] == "serving_default"
    assert "chat" in listed and "beam_search" in listed


@pytest.mark.parametrize("name", [*EMPTY, *EMPTY_CHAT])
def test_a_batch_of_0_rows_gives_empty_outputs(served, name):
    outputs = _outputs(served[0][name])
    for key, output in outputs.items():
        assert output["shape"][0] == 0, key
        assert output["value"] == [], key
        rank = 2 if key == "token_ids" else 1
        assert len(output["shape"]) == rank, key
        if key in ("text", "stop_reason"):
            assert output["dtype"] == "object", key  # tf.string
        elif key in ("log_likelihood", "score"):
            assert output["dtype"] == "float32", key
        else:
            assert output["dtype"] == "int32", key


def _assert_empty_replies(outputs: dict, rows: int, reason: str) -> None:
    assert outputs["text"]["value"] == [""] * rows
    assert outputs["num_tokens"]["value"] == [0] * rows
    assert outputs["stop_reason"]["value"] == [reason] * rows
    if "token_ids" in outputs:
        assert outputs["token_ids"]["shape"] == [rows, 0]


@pytest.mark.parametrize("name", list(NO_TOKEN))
def test_no_new_token_gives_empty_replies(served, name):
    _, rows, reason = NO_TOKEN[name]
    outputs = _outputs(served[0][name])
    _assert_empty_replies(outputs, rows, reason)
    if "prompt_index" in outputs:
        assert len(outputs["prompt_index"]["value"]) == rows


@pytest.mark.parametrize("name", list(EOS_FIRST))
def test_a_reply_that_starts_with_the_end_id_is_empty(served, name):
    _, rows, reason = EOS_FIRST[name]
    _assert_empty_replies(_outputs(served[0][f"eos_{name}"]), rows, reason)
