import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest
import tensorflow as tf

from tflm import errors
from tflm import tokenizers

TEXTS = ["hello world", "红楼梦 🙂", "\u2581 x", ""]


@pytest.fixture(scope="module")
def sentencepiece():
    lines = [f"hello world number {i} 红楼梦" for i in range(200)]
    return tokenizers.SentencePieceTokenizer.train(
        texts=["\n".join(lines)], vocabulary_size=300
    )


class _Export(tf.Module):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(self, texts):
        ids = self.tokenizer.tokenize(texts)
        return {
            "ids": ids.to_tensor(default_value=self.tokenizer.pad_id),
            "text": self.tokenizer.detokenize(ids),
        }


def test_survives_global_seed_reset(sentencepiece):
    before = sentencepiece.tokenize("hello world").numpy().tolist()
    keras.utils.set_random_seed(1)
    tf.random.set_seed(2)
    assert sentencepiece.tokenize("hello world").numpy().tolist() == before


def test_saved_model_runs_with_only_tensorflow_text(sentencepiece, tmp_path):
    expected = {}
    for name, tok in [
        ("sp", sentencepiece),
        ("byte", tokenizers.ByteTokenizer()),
    ]:
        tf.saved_model.save(_Export(tok), str(tmp_path / name))
        ids = tok.tokenize(TEXTS).to_tensor(default_value=tok.pad_id)
        expected[name] = ids.numpy().tolist()
    assert os.listdir(tmp_path / "sp" / "assets") == []  # model is in-graph
    script = textwrap.dedent(
        f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # noqa: F401
        out = {{}}
        for name in ("sp", "byte"):
            fn = tf.saved_model.load({str(tmp_path)!r} + "/" + name).round_trip
            result = fn(tf.constant({TEXTS!r}))
            out[name] = [result["ids"].numpy().tolist(),
                         [t.decode() for t in result["text"].numpy()]]
        assert "tflm" not in sys.modules
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("sp", "byte"):
        assert out[name] == [expected[name], TEXTS]


def test_loaded_sentencepiece_tracks_its_model_file(sentencepiece, tmp_path):
    sentencepiece.save(tmp_path / "tok")
    loaded = tokenizers.SentencePieceTokenizer.load(tmp_path / "tok")
    tf.saved_model.save(_Export(loaded), str(tmp_path / "sm"))
    assets = os.listdir(tmp_path / "sm" / "assets")
    assert assets == ["sentencepiece.model"]


def test_tokenizer_json_names_the_type(sentencepiece, tmp_path):
    sentencepiece.save(tmp_path)
    with open(tmp_path / "tokenizer.json") as f:
        config = json.load(f)
    assert config["type"] == "sentencepiece"
    assert config["vocabulary_size"] == 300
    assert config["eos_id"] == sentencepiece.eos_id
    assert tokenizers.is_tokenizer_directory(tmp_path)


def test_load_checks_the_class(tmp_path):
    tokenizers.ByteTokenizer().save(tmp_path)
    with pytest.raises(ValueError, match="ByteTokenizer"):
        tokenizers.SentencePieceTokenizer.load(tmp_path)


def test_load_errors(tmp_path):
    with pytest.raises(errors.InputError, match="tokenizer.json"):
        tokenizers.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match="wordpiece"):
        tokenizers.load_tokenizer(tmp_path)


def test_chars_per_token():
    byte = tokenizers.ByteTokenizer()
    assert tokenizers.chars_per_token(byte, ["abcd", "红"]) == 5 / 7
    assert tokenizers.chars_per_token(byte, []) == 0.0
