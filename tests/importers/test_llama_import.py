"""Llama, Qwen2 and Mistral checkpoints import with transformers' logits,
greedy and beam choices, end ids and context, and bad ones are refused.

The checkpoints are transformers' own models with random weights, written
by `save_pretrained` in `tmp_path` (`llama_files`); both sides read the
same files.
"""

import copy
import json
import os
import shutil

import llama_files
import numpy as np
import pytest
import tokenizers

from tflm import cli
from tflm import importers
from tflm.importers import llama
from tflm.models.causal_lm import CausalLM

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

FAMILIES = list(llama_files.CHECKPOINTS)
# Mixed lengths: tflm runs them as one left-padded batch.
PROMPTS = [
    [5, 9, 40, 33, 7, 100, 12],
    [8, 100, 250],
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
]
NEW = 10


class Imported:
    def __init__(self, directory, hf, lm):
        self.directory, self.hf, self.lm = directory, hf, lm

    @property
    def eos_ids(self):
        """Every id that ends tflm's generation (tokenizer, template,
        generation_config.json)."""
        return list(self.lm.generator(False).pipeline.eos_ids)


@pytest.fixture(scope="module")
def sentencepiece_bytes():
    return llama_files.sentencepiece_model()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, sentencepiece_bytes):
    """Each family written by transformers and imported by `tflm import`
    into a model directory, loaded back with `from_preset`."""
    out = {}
    for name in FAMILIES:
        path = str(tmp_path_factory.mktemp(name))
        hf = llama_files.write_checkpoint(
            path, name, sentencepiece_bytes=sentencepiece_bytes
        )
        model_dir = importers.import_checkpoint(path, path + "-tflm")
        out[name] = Imported(path, hf, CausalLM.from_preset(model_dir))
    return out


def _left_padded(prompts):
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), "int32")
    mask = np.zeros((len(prompts), width), "int32")
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return {"token_ids": ids, "padding_mask": mask}


def _hf_logits(hf, prompt):
    with torch.no_grad():
        return hf(torch.tensor([prompt])).logits[0].float().numpy()


def _hf_generate(hf, prompt, eos_ids, **kwargs):
    """transformers' continuations of `prompt`, each cut before its eos."""
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=list(eos_ids),
            pad_token_id=eos_ids[0],
            **kwargs,
        )
    rows = []
    for row in out[:, len(prompt) :].tolist():
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        rows.append(row[: ends[0]] if ends else row)
    return rows


def _assert_logits_equal(lm, hf, prompts=PROMPTS):
    got = np.asarray(lm(_left_padded(prompts)))
    width = got.shape[1]
    for row, prompt in enumerate(prompts):
        want = _hf_logits(hf, prompt)
        assert np.abs(want).max() > 1.0  # not a vacuous comparison
        np.testing.assert_allclose(
            got[row, width - len(prompt) :], want, rtol=0, atol=1e-4
        )


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_equal_transformers(checkpoints, name):
    imported = checkpoints[name]
    _assert_logits_equal(imported.lm, imported.hf)


@pytest.mark.parametrize(
    "changes",
    [
        {"attention_bias": True, "mlp_bias": True},
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0}},
        {"num_key_value_heads": 4},
        {"num_key_value_heads": 1, "rms_norm_eps": 1e-5},
    ],
    ids=["biases", "linear_rope", "mha", "mqa"],
)
def test_llama_variants_equal_transformers(
    sentencepiece_bytes, changes, tmp_path
):
    """Llama's other config fields: biases on every projection (the fused
    SwiGLU kernel's halves included), linear rope scaling, 1 or all key
    heads."""
    config = llama_files.config("llama_tied", 400, **changes)
    hf = llama_files.random_model(config)
    llama_files.write_checkpoint(
        str(tmp_path), "llama_tied", sentencepiece_bytes=sentencepiece_bytes,
        model=hf,
    )  # fmt: skip
    lm, _ = importers.load_checkpoint(str(tmp_path))
    _assert_logits_equal(lm, hf, PROMPTS[:2])


def test_the_checkpoints_cover_each_mapping(checkpoints):
    backbones = {n: c.lm.backbone for n, c in checkpoints.items()}
    assert backbones["llama"].rope_scaling["type"] == "llama3"
    assert backbones["llama"].head_dim == 12 != 32 // 4
    assert not backbones["llama"].tie_embeddings
    assert backbones["llama_tied"].tie_embeddings
    assert backbones["qwen2"].qkv_bias and backbones["qwen2"].tie_embeddings
    assert not backbones["qwen2"].output_bias
    assert not backbones["mistral"].qkv_bias


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_generate_equals_transformers(checkpoints, name):
    imported = checkpoints[name]
    eos = imported.eos_ids
    out = imported.lm.generate(
        PROMPTS, NEW, return_details=True, jit_compile=False
    )
    want = [_hf_generate(imported.hf, p, eos)[0] for p in PROMPTS]
    assert out["token_ids"] == want
    assert sum(map(len, want)) > len(PROMPTS)


# Beam search is the same loop for every family: two suffice.
@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_beam_search_equals_transformers(checkpoints, name):
    imported = checkpoints[name]
    eos = imported.eos_ids
    settings = dict(num_beams=4, length_penalty=0.8, early_stopping=True)
    out = imported.lm.generate(
        PROMPTS[0], NEW, num_return_sequences=4, return_details=True,
        jit_compile=False, **settings,
    )  # fmt: skip
    want = _hf_generate(
        imported.hf, PROMPTS[0], eos, num_return_sequences=4, **settings
    )
    assert out["token_ids"] == want
    assert len(set(map(tuple, want))) == 4


# transformers 4.x configs -----------------------------------------------------
@pytest.mark.parametrize(
    "name, keys",
    [
        ("llama", ("rope_type",)),
        ("llama", ("type",)),
        ("mistral", ("rope_type",)),
        ("qwen2", ("rope_type",)),
    ],
)
def test_transformers4_config_imports_the_same(
    checkpoints, name, keys, tmp_path
):
    imported = checkpoints[name]
    path = str(tmp_path / "v4")
    shutil.copytree(imported.directory, path)
    llama_files.as_transformers4(path, keys)
    config = llama_files.read_json(path, "config.json")
    assert "rope_parameters" not in config and "rope_theta" in config
    assert "torch_dtype" in config and "dtype" not in config
    lm, _ = importers.load_checkpoint(path)
    ours, theirs = lm.backbone.get_config(), imported.lm.backbone.get_config()
    ours.pop("name"), theirs.pop("name")
    assert ours == theirs
    for ours, theirs in zip(lm.weights, imported.lm.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # transformers reads the old form as the new one.
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    _assert_logits_equal(lm, hf, PROMPTS[:1])


# Half-precision checkpoints ---------------------------------------------------
def _checkpoint_tensors(path):
    tensors = {}
    for name in os.listdir(path):
        if name.endswith(".safetensors"):
            tensors.update(
                safetensors_torch.load_file(os.path.join(path, name))
            )
    return {k: v.float().numpy() for k, v in tensors.items()}


def _variable_value(target):
    value = np.asarray(target.variable.numpy())
    if target.transpose:
        width = target.width or value.shape[1]
        return value[:, target.column : target.column + width].T
    if target.width is not None:
        return value[target.column : target.column + target.width]
    return value


@pytest.mark.parametrize(
    "name, dtype", [("llama", "bfloat16"), ("qwen2", "float16")]
)
def test_half_precision_shards_import_exactly(
    checkpoints, name, dtype, tmp_path
):
    imported = checkpoints[name]
    path = str(tmp_path / dtype)
    llama_files.write_checkpoint(
        path, name, model=imported.hf, dtype=getattr(torch, dtype),
        max_shard_size="20KB",
    )  # fmt: skip
    index = llama_files.read_json(path, "model.safetensors.index.json")
    assert len(set(index["weight_map"].values())) >= 3
    lm, _ = importers.load_checkpoint(path)
    tensors = _checkpoint_tensors(path)
    targets = llama.targets(lm.backbone)
    assert set(targets) == set(tensors)
    for tensor, target in targets.items():
        np.testing.assert_array_equal(
            _variable_value(target), tensors[tensor], err_msg=tensor
        )
    # Rounding changed the weights, and the logits follow transformers'.
    assert not np.array_equal(
        lm.backbone.token_embedding.embeddings.numpy(),
        imported.lm.backbone.token_embedding.embeddings.numpy(),
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32
    ).eval()
    _assert_logits_equal(lm, hf, PROMPTS[:2])


# Llama 3's end ids -----------------------------------------------------------
EOT = llama_files.LLAMA3_EOT
END = llama_files.LLAMA3_END


def _ending_at_eot(hf):
    """A copy of `hf` whose greedy reply to `PROMPTS[0]` ends with
    `<|eot_id|>` after a few tokens: that token's head row is set to a
    multiple of the row of greedy's k-th token, for the first k (>= 2) and
    multiple that make it win there and not before."""
    greedy = _hf_generate(hf, PROMPTS[0], [END])[0]
    for k in range(2, len(greedy)):
        for factor in (1.05, 1.2, 1.5):
            model = copy.deepcopy(hf)
            with torch.no_grad():
                row = model.lm_head.weight[greedy[k]]
                model.lm_head.weight[EOT] = factor * row
            if _hf_generate(model, PROMPTS[0], [END, EOT])[0] == greedy[:k]:
                return model
    raise AssertionError("no head row makes <|eot_id|> end the reply")


@pytest.fixture(scope="module")
def eot_models(checkpoints, tmp_path_factory):
    """The Llama 3 checkpoint changed so that greedy ends a turn with
    `<|eot_id|>` (`_ending_at_eot`). No chat template: only
    generation_config.json names `<|eot_id|>` as an end id; a copy lists
    only `<|end_of_text|>`."""
    hf = _ending_at_eot(checkpoints["llama"].hf)
    path = str(tmp_path_factory.mktemp("eot"))
    llama_files.write_checkpoint(path, "llama", template=None, model=hf)
    single = path + "-single"
    shutil.copytree(path, single)
    llama_files.write_json(
        single, "generation_config.json", {"eos_token_id": END}
    )
    models = [importers.load_checkpoint(p)[0] for p in (path, single)]
    return hf, *models


def test_llama3_eos_list_stops_at_eot(eot_models):
    hf, lm, _ = eot_models
    assert lm.template is None and lm.tokenizer.eos_id == END
    assert lm.eos_ids == (EOT,)
    with torch.no_grad():
        full = hf.generate(
            torch.tensor([PROMPTS[0]]), max_new_tokens=NEW, do_sample=False,
            eos_token_id=[END, EOT], pad_token_id=END,
        )[0, len(PROMPTS[0]) :].tolist()  # fmt: skip
    assert full[-1] == EOT and 3 <= len(full) < NEW
    out = lm.generate(PROMPTS[0], NEW, return_details=True, jit_compile=False)
    assert out["stop_reason"] == ["eos"]
    assert out["token_ids"] == [full[:-1]]


def test_without_the_eos_list_eot_is_an_ordinary_token(eot_models):
    _, with_list, lm = eot_models
    assert lm.eos_ids == ()
    out = lm.generate(PROMPTS[0], NEW, return_details=True, jit_compile=False)
    assert out["stop_reason"] == ["length"]
    reply = out["token_ids"][0]
    stopped = with_list.generate(PROMPTS[0], NEW, jit_compile=False)
    assert reply[len(stopped)] == EOT and reply[: len(stopped)] == stopped


# Context ----------------------------------------------------------------------
def test_mistral_context_is_its_sliding_window(checkpoints):
    assert checkpoints["mistral"].lm.backbone.max_sequence_length == 32
    assert checkpoints["llama"].lm.backbone.max_sequence_length == 64


@pytest.mark.parametrize(
    "changes, context",
    [
        ({"sliding_window": None}, 64),
        ({"sliding_window": 64}, 64),
        ({"sliding_window": 4096}, 64),
        ({"sliding_window": 16}, 16),
        ({"model_type": "qwen2", "sliding_window": 16}, 64),
        (
            {
                "model_type": "qwen2",
                "sliding_window": 16,
                "use_sliding_window": True,
            },
            16,
        ),
    ],
)
def test_context_is_positions_capped_by_the_window(
    checkpoints, changes, context
):
    config = llama_files.read_json(
        checkpoints["mistral"].directory, "config.json"
    )
    config.update(changes)
    assert llama.context(config, "config.json", None) == context
    assert llama.context(config, "config.json", 8) == 8


def test_max_context_below_the_limit_is_kept(checkpoints):
    lm, _ = importers.load_checkpoint(
        checkpoints["mistral"].directory, max_context=20
    )
    assert lm.backbone.max_sequence_length == 20
    _assert_logits_equal(lm, checkpoints["mistral"].hf, PROMPTS[:2])


# Bad input --------------------------------------------------------------------
def _bert(path):
    llama_files.write_json(
        path, "config.json",
        {"model_type": "bert", "architectures": ["BertModel"]},
    )  # fmt: skip


def _shards(path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path)
    os.remove(os.path.join(path, "model.safetensors"))
    hf.save_pretrained(path, max_shard_size="20KB")
    files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    assert len(files) >= 3
    return os.path.join(path, files[1])


def _missing_shard(path):
    shard = _shards(path)
    os.remove(shard)
    return os.path.basename(shard)


def _truncated_shard(path):
    shard = _shards(path)
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    return os.path.basename(shard)


BAD_TENSOR = "model.layers.1.self_attn.k_proj.weight"


def _bad_shape(path):
    file = os.path.join(path, "model.safetensors")
    tensors = safetensors_torch.load_file(file)
    tensors[BAD_TENSOR] = tensors[BAD_TENSOR][:-1]
    safetensors_torch.save_file(tensors, file, metadata={"format": "pt"})
    return BAD_TENSOR


def _yarn(path):
    config = llama_files.read_json(path, "config.json")
    config["rope_parameters"] = {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 16,
    }  # fmt: skip
    llama_files.write_json(path, "config.json", config)


def _wordpiece(path):
    os.remove(os.path.join(path, "tokenizer.model"))
    vocab = {t: i for i, t in enumerate(["[UNK]", "[CLS]", "a", "##b"])}
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordPiece(vocab, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(os.path.join(path, "tokenizer.json"))


def _llama2_template(path):
    config = llama_files.read_json(path, "tokenizer_config.json")
    config["chat_template"] = llama_files.TEMPLATES["llama2"]
    llama_files.write_json(path, "tokenizer_config.json", config)


BAD_INPUT = [
    # (change, flags, what the message names)
    (_bert, [], ["BertModel", "llama, qwen2, mistral"]),
    (_missing_shard, [], ["{}", "is missing", "Download every shard"]),
    (_truncated_shard, [], ["{}"]),
    (_bad_shape, [], ["model.safetensors", "{}", "shape"]),
    (_yarn, [], ["'yarn'", "config.json"]),
    (_wordpiece, [], ["WordPiece", "tokenizer.json"]),
    (
        _llama2_template,
        [],
        [
            "tokenizer_config.json",
            "--chat-template chatml|llama3|mistral|zephyr|tflm",
        ],
    ),
    (None, ["--max-context", "33"], ["sliding_window = 32", "--max-context"]),
]


@pytest.fixture
def mistral_copy(checkpoints, tmp_path):
    path = str(tmp_path / "checkpoint")
    shutil.copytree(checkpoints["mistral"].directory, path)
    return path


@pytest.mark.parametrize(
    "change, flags, names",
    BAD_INPUT,
    ids=[c.__name__[1:] if c else "window" for c, _, _ in BAD_INPUT],
)
def test_bad_checkpoint_exits_2_and_writes_nothing(
    mistral_copy, tmp_path, capsys, change, flags, names
):
    named = change(mistral_copy) if change else None
    out = str(tmp_path / "out")
    assert cli.main(["import", mistral_copy, "--out", out, *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    error = lines[-1]  # (after the log lines)
    assert error.startswith("tflm import: error: "), lines
    assert not any("Traceback" in line for line in lines)
    for name in names:
        assert name.format(named) in error
    assert not os.path.exists(out)


def test_max_context_above_positions_is_refused(checkpoints, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = ["import", checkpoints["llama"].directory, "--out", out]
    assert cli.main(argv + ["--max-context", "65"]) == 2
    assert "max_position_embeddings = 64" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_chat_template_flag_overrides_an_unknown_template(
    mistral_copy, tmp_path
):
    _llama2_template(mistral_copy)
    out = str(tmp_path / "out")
    argv = ["import", mistral_copy, "--out", out, "--chat-template", "mistral"]
    assert cli.main(argv) == 0
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["template"] == {"name": "mistral"}
