"""GGUF export: files read back with llama.cpp's own reader (`gguf`), run
by a numpy rendering of llama.cpp's graphs for each architecture, give the
model's logits; tensors, dtypes and metadata are as the converter writes
them."""

import os

import numpy as np
import pytest

from tflm import errors
from tflm import importers
from tflm import tokenizers
from tflm.export import gguf as gguf_export
from tflm.export import hf_chat_template
from tflm.models.backbone import Backbone
from tflm.models.causal_lm import CausalLM

gguf = pytest.importorskip("gguf", reason="gguf (the gguf extra) is absent")
import gpt2_files  # noqa: E402

VOCAB = 304  # Above the tokenizers' ids: the rest are padding tokens.
IDS = np.array([5, 17, 3, 250, 42, 9, 77, 120, 1, 64])


def _lm(tokenizer, **overrides):
    config = dict(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2,
        num_key_value_heads=1, hidden_dim=16, intermediate_dim=24,
        max_sequence_length=16, norm="rmsnorm", activation="swiglu",
        position_embedding="rotary", use_bias=False, fused_qkv=False,
        tie_embeddings=False, layer_norm_epsilon=1e-6,
        rope_max_wavelength=100.0,
    )  # fmt: skip
    config.update(overrides)
    lm = CausalLM(Backbone(**config))
    rng = np.random.default_rng(0)
    lm.set_weights(
        [rng.normal(0, 0.3, w.shape).astype("float32") for w in lm.weights]
    )
    lm.tokenizer = tokenizer
    return lm


@pytest.fixture(scope="module")
def sentencepiece():
    lines = [f"the {w} sat on {v} mat\n" for w in "abcdef" for v in "xyz"]
    return tokenizers.SentencePieceTokenizer.train(
        texts=lines * 20, vocabulary_size=300
    )


@pytest.fixture(scope="module")
def bpe():
    vocab, merges = gpt2_files.train_bpe()
    top = max(vocab.values())
    added = [
        dict(content=text, id=top + 1 + i, special=True, normalized=False)
        for i, text in enumerate(("<|eot|>", "<|im_start|>", "<|im_end|>"))
    ]
    return tokenizers.BPETokenizer(
        vocab, merges, pretokenizer="qwen2", added_tokens=added,
        bos_id=top + 1, eos_id=top + 1, pad_id=top + 1,
    )  # fmt: skip


def _read(path):
    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    meta = {k: f.contents() for k, f in reader.fields.items()}
    return tensors, meta


def _logits(lm, ids=IDS):
    inputs = {"token_ids": ids[None], "padding_mask": np.ones([1, len(ids)])}
    return np.asarray(lm(inputs))[0]


def _rms(x, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)


def _layer_norm(x, eps, weight, bias):
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * weight + bias


def _rope(x, base, interleaved, scale, divisors):
    """llama.cpp's rope: pairs (2i, 2i+1) (`NORM`) or (i, i + H/2) (`NEOX`),
    angle position * scale * base^(-2i/H) / divisor_i."""
    length, _, dim = x.shape
    i = np.arange(dim // 2)
    angle = np.arange(length)[:, None] * scale * base ** (-2.0 * i / dim)
    angle = (angle / divisors)[:, None, :]
    picks = (np.s_[..., 0::2], np.s_[..., 1::2])
    if not interleaved:
        picks = (np.s_[..., : dim // 2], np.s_[..., dim // 2 :])
    a, b = x[picks[0]], x[picks[1]]
    out = np.empty_like(x)
    out[picks[0]] = a * np.cos(angle) - b * np.sin(angle)
    out[picks[1]] = a * np.sin(angle) + b * np.cos(angle)
    return out


def _attend(q, k, v):
    length, heads, dim = q.shape
    k, v = (np.repeat(t, heads // t.shape[1], axis=1) for t in (k, v))
    scores = np.einsum("snh,tnh->nst", q, k) / np.sqrt(dim)
    scores = np.where(np.tri(length, dtype=bool), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("nst,tnh->snh", p, v).reshape(length, heads * dim)


def _llama_cpp(path, ids=IDS):
    """Logits of a GGUF file as llama.cpp's llama / qwen2 / gpt2 graphs
    compute them (float64), read only from the file."""
    t, meta = _read(path)
    t = {name: value.astype(np.float64) for name, value in t.items()}
    arch = meta["general.architecture"]
    key = {k.split(".", 1)[1]: v for k, v in meta.items() if arch in k[:5]}
    heads = key["attention.head_count"]
    kv = key.get("attention.head_count_kv", heads)
    dim = key.get("attention.key_length", key["embedding_length"] // heads)

    def linear(x, name):
        return x @ t[f"{name}.weight"].T + t.get(f"{name}.bias", 0.0)

    def norm(name):
        return t[f"{name}.weight"], t[f"{name}.bias"]

    def rope(x):
        scale = 1 / key.get("rope.scaling.factor", 1.0)
        divisors = t.get("rope_freqs.weight", 1.0)
        return _rope(x, key["rope.freq_base"], arch == "llama", scale, divisors)

    x = t["token_embd.weight"][ids]
    if arch == "gpt2":
        eps = key["attention.layer_norm_epsilon"]
        x = x + t["position_embd.weight"][: len(ids)]
    else:
        eps = key["attention.layer_norm_rms_epsilon"]
    for i in range(key["block_count"]):
        p = f"blk.{i}."
        if arch == "gpt2":
            h = _layer_norm(x, eps, *norm(p + "attn_norm"))
            q, k, v = np.split(linear(h, p + "attn_qkv"), 3, axis=-1)
            q, k, v = (a.reshape(len(ids), heads, dim) for a in (q, k, v))
        else:
            h = _rms(x, eps) * t[p + "attn_norm.weight"]
            q = rope(linear(h, p + "attn_q").reshape(len(ids), heads, dim))
            k = rope(linear(h, p + "attn_k").reshape(len(ids), kv, dim))
            v = linear(h, p + "attn_v").reshape(len(ids), kv, dim)
        x = x + linear(_attend(q, k, v), p + "attn_output")
        if arch == "gpt2":
            h = _layer_norm(x, eps, *norm(p + "ffn_norm"))
            u = linear(h, p + "ffn_up")
            u = 0.5 * u * (1 + np.tanh(0.7978845608 * (u + 0.044715 * u**3)))
        else:
            h = _rms(x, eps) * t[p + "ffn_norm.weight"]
            g = linear(h, p + "ffn_gate")
            u = g / (1 + np.exp(-g)) * linear(h, p + "ffn_up")
        x = x + linear(u, p + "ffn_down")
    if arch == "gpt2":
        x = _layer_norm(x, eps, *norm("output_norm"))
    else:
        x = _rms(x, eps) * t["output_norm.weight"]
    return x @ t.get("output.weight", t["token_embd.weight"]).T


def test_permute_interleaves_the_halves_of_each_head():
    rows = np.random.default_rng(0).normal(size=(3 * 8, 5))
    out = gguf_export.permute(rows, 3)
    # Hugging Face pairs rows (i, i + 4) of a head; llama.cpp (2i, 2i + 1).
    for head in range(3):
        for i in range(4):
            first, second = head * 8 + 2 * i, head * 8 + 2 * i + 1
            np.testing.assert_array_equal(out[first], rows[head * 8 + i])
            np.testing.assert_array_equal(out[second], rows[head * 8 + 4 + i])


@pytest.mark.parametrize("fused_qkv", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_llama_runs_as_the_model(sentencepiece, tmp_path, fused_qkv, tie):
    lm = _lm(sentencepiece, fused_qkv=fused_qkv, tie_embeddings=tie)
    path = gguf_export.to_gguf(lm, tmp_path / "m.gguf")
    np.testing.assert_allclose(_llama_cpp(path), _logits(lm), atol=1e-4)
    tensors, meta = _read(path)
    assert ("output.weight" in tensors) is not tie  # llama.cpp ties by absence.
    assert len(tensors) == 3 + 9 * 2 - tie
    assert tensors["blk.1.attn_k.weight"].shape == (8, 16)  # 1 kv head of 8.
    assert os.listdir(tmp_path) == ["m.gguf"]


def test_llama_metadata_and_sentencepiece_vocabulary(sentencepiece, tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    lm = _lm(sentencepiece)
    _, meta = _read(gguf_export.to_gguf(lm, tmp_path / "m.gguf"))
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    expected = {
        "context_length": 16, "embedding_length": 16, "block_count": 2,
        "feed_forward_length": 24, "attention.head_count": 2,
        "attention.head_count_kv": 1, "rope.freq_base": 100.0,
        "rope.dimension_count": 8, "vocab_size": VOCAB,
    }  # fmt: skip
    assert {k: meta[f"llama.{k}"] for k in expected} == expected
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    proto = sentencepiece_model_pb2.ModelProto.FromString(
        sentencepiece.model_proto
    )
    pieces = [p.piece for p in proto.pieces]
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == pieces + [
        f"[PAD{i}]" for i in range(300, VOCAB)
    ]
    np.testing.assert_allclose(
        meta["tokenizer.ggml.scores"][:300], [p.score for p in proto.pieces]
    )
    types = meta["tokenizer.ggml.token_type"]
    assert types[300:] == [5] * (VOCAB - 300)  # Unused.
    assert types[pieces.index("<0x41>")] == 6  # Byte.
    newline = pieces.index("\n")  # User-defined: normal, as converted.
    assert proto.pieces[newline].type == 4 and types[newline] == 1
    assert types[pieces.index("the")] == 1
    ids = {k: meta[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos")}
    assert ids == {"bos": sentencepiece.bos_id, "eos": sentencepiece.eos_id}
    assert types[sentencepiece.eos_id] == 3  # Control.
    assert meta["tokenizer.ggml.padding_token_id"] == sentencepiece.pad_id
    assert meta["tokenizer.ggml.unknown_token_id"] == sentencepiece.unk_id
    assert meta["tokenizer.ggml.add_space_prefix"] is bool(
        proto.normalizer_spec.add_dummy_prefix
    )
    assert "tokenizer.chat_template" not in meta


def test_float16_stores_weights_in_float16_and_norms_in_float32(
    sentencepiece, tmp_path
):
    lm = _lm(sentencepiece)
    full, _ = _read(gguf_export.to_gguf(lm, tmp_path / "a.gguf"))
    path = gguf_export.to_gguf(lm, tmp_path / "b.gguf", dtype="float16")
    half, meta = _read(path)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert half.keys() == full.keys()
    for name, value in half.items():
        expected = np.float16 if full[name].ndim == 2 else np.float32
        assert value.dtype == expected, name
        np.testing.assert_array_equal(value, full[name].astype(expected))
    assert half["blk.0.attn_norm.weight"].dtype == np.float32


def test_llama_with_its_own_head_size_and_biases(sentencepiece, tmp_path):
    """A head size that is not width / heads (`attention.key_length`) and
    biases on every projection, permuted with q and k."""
    lm = _lm(sentencepiece, head_dim=12, use_bias=True)
    path = gguf_export.to_gguf(lm, tmp_path / "m.gguf")
    _, meta = _read(path)
    assert meta["llama.attention.key_length"] == 12
    np.testing.assert_allclose(_llama_cpp(path), _logits(lm), atol=1e-4)


@pytest.mark.parametrize(
    "scaling",
    [
        {"type": "linear", "factor": 2.0},
        {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ],
)  # fmt: skip
def test_rope_scaling_runs_as_the_model(sentencepiece, tmp_path, scaling):
    lm = _lm(sentencepiece, rope_scaling=scaling)
    path = gguf_export.to_gguf(lm, tmp_path / "m.gguf")
    np.testing.assert_allclose(_llama_cpp(path), _logits(lm), atol=1e-4)
    tensors, meta = _read(path)
    if scaling["type"] == "linear":
        assert meta["llama.rope.scaling.type"] == "linear"
        assert meta["llama.rope.scaling.factor"] == 2.0
    else:  # Wavelengths 6.3 (between 4 and 16), 20, 63, 199 (above 16).
        divisors = tensors["rope_freqs.weight"]
        smooth = (16 / (2 * np.pi) - 1) / (4 - 1)
        assert divisors[0] == pytest.approx(1 / ((1 - smooth) / 8 + smooth))
        np.testing.assert_array_equal(divisors[1:], [8.0, 8.0, 8.0])


def test_qwen2_with_bpe_tokenizer_and_chat_template(bpe, tmp_path):
    lm = _lm(
        bpe, vocabulary_size=bpe.vocabulary_size, qkv_bias=True, fused_qkv=True
    )
    lm.template = {"name": "chatml"}
    lm.eos_ids = (bpe.special_tokens["<|im_end|>"],)
    path = gguf_export.to_gguf(lm, tmp_path / "m.gguf")
    np.testing.assert_allclose(_llama_cpp(path), _logits(lm), atol=1e-4)
    tensors, meta = _read(path)
    assert meta["general.architecture"] == "qwen2"
    assert (
        "blk.0.attn_q.bias" in tensors
        and "blk.0.attn_output.bias" not in tensors
    )
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    _, merges = gpt2_files.train_bpe()
    assert meta["tokenizer.ggml.merges"] == merges
    tokens, types = (
        meta["tokenizer.ggml.tokens"],
        meta["tokenizer.ggml.token_type"],
    )
    for text, index in bpe.special_tokens.items():
        assert (tokens[index], types[index]) == (text, 3)
    assert meta["tokenizer.ggml.eot_token_id"] == lm.eos_ids[0]
    assert meta["tokenizer.chat_template"] == hf_chat_template.jinja(
        lm.template, bpe
    )


def test_gpt2_import_runs_as_the_model(tmp_path):
    gpt2_files.write_checkpoint(str(tmp_path / "hf"))
    lm = CausalLM.from_preset(
        importers.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "lm"))
    )
    path = gguf_export.to_gguf(lm, tmp_path / "m.gguf")
    np.testing.assert_allclose(_llama_cpp(path), _logits(lm), atol=1e-4)
    tensors, meta = _read(path)
    np.testing.assert_array_equal(
        tensors["output.weight"], tensors["token_embd.weight"]
    )
    assert meta["gpt2.context_length"] == lm.backbone.max_sequence_length
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    vocab, merges = gpt2_files.train_bpe()
    assert meta["tokenizer.ggml.merges"] == merges
    assert meta["tokenizer.ggml.tokens"][: len(vocab)] == sorted(
        vocab, key=vocab.get
    )
    half, _ = _read(
        gguf_export.to_gguf(lm, tmp_path / "h.gguf", dtype="float16")
    )
    assert half["position_embd.weight"].dtype == np.float32
    assert half["blk.0.attn_qkv.weight"].dtype == np.float16


def test_refusals_leave_nothing_behind(sentencepiece, tmp_path):
    lm = _lm(sentencepiece)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"earlier")
    with pytest.raises(
        errors.InputError, match="already exists. Pass --overwrite"
    ):
        gguf_export.to_gguf(lm, path)
    assert path.read_bytes() == b"earlier"
    with pytest.raises(errors.InputError, match="dtype must be one of"):
        gguf_export.to_gguf(lm, path, overwrite=True, dtype="bfloat16")
    lm.tokenizer = tokenizers.ByteTokenizer()
    with pytest.raises(
        errors.InputError, match="ByteTokenizer has no llama.cpp"
    ):
        gguf_export.to_gguf(lm, path, overwrite=True)
    lm.tokenizer = sentencepiece
    llama3 = dict(
        type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16,
    )  # fmt: skip
    qwen2 = _lm(sentencepiece, qkv_bias=True, rope_scaling=llama3)
    with pytest.raises(errors.InputError, match="llama3 rope scaling has no"):
        gguf_export.to_gguf(qwen2, path, overwrite=True)
    lm.backbone.token_embedding.embeddings.assign(
        np.full(lm.backbone.token_embedding.embeddings.shape, 1e6, "float32")
    )
    with pytest.raises(errors.InputError, match="beyond float16's range"):
        gguf_export.to_gguf(lm, path, overwrite=True, dtype="float16")
    assert sorted(os.listdir(tmp_path)) == ["m.gguf"]
    assert path.read_bytes() == b"earlier"
    gguf_export.to_gguf(lm, path, overwrite=True)
    assert _read(str(path))[1]["general.name"] == "m"


def _transformers_logits(path, ids=IDS):
    """Logits of transformers reading the GGUF file (its own dequantizing
    reader, which undoes llama.cpp's q/k permutation): a reader of the
    file that tflm did not write."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    folder, name = os.path.split(str(path))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name
    ).eval()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits.numpy()[0]


# Not GPT-2: transformers' GGUF reader builds GPT-2 with 1,024 positions
# whatever `gpt2.context_length` says, and refuses the smaller table.
@pytest.mark.parametrize("kind", ["llama", "llama-tied", "qwen2"])
def test_transformers_reads_the_file_with_the_models_logits(
    sentencepiece, bpe, tmp_path, kind
):
    if kind == "qwen2":
        lm = _lm(bpe, vocabulary_size=bpe.vocabulary_size, qkv_bias=True)
    else:
        lm = _lm(sentencepiece, fused_qkv=True, tie_embeddings=kind != "llama")
    path = gguf_export.to_gguf(lm, tmp_path / "m.gguf")
    np.testing.assert_allclose(
        _transformers_logits(path), _logits(lm), atol=1e-4
    )
