"""The export in apps without tflm: `tf.saved_model.load` in a fresh process
that imports only TensorFlow and TF Text, and `keras.layers.TFSMLayer`."""

import json
import textwrap

import keras
import numpy as np
import serving_helpers as helpers
import tensorflow as tf

# Imports only tensorflow and tensorflow_text (and the standard library).
LOAD_SCRIPT = textwrap.dedent(
    """
    import base64, json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF Text ops)

    def to_json(value):
        if isinstance(value, bytes):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value

    def tensor(value, dtype):
        if dtype == tf.string:
            value = [
                base64.b64decode(v["b64"]) if isinstance(v, dict) else v
                for v in value
            ]
        return tf.constant(value, dtype)

    results = []
    for path, body in json.loads(sys.argv[1]):
        model = tf.saved_model.load(path)
        function = model.signatures[body["signature_name"]]
        specs = function.structured_input_signature[1]
        out = function(
            **{k: tensor(v, specs[k].dtype) for k, v in body["inputs"].items()}
        )
        out = {k: v.numpy().tolist() for k, v in out.items()}
        results.append({k: [to_json(x) for x in v] for k, v in out.items()})
    # (`import tensorflow` itself imports keras when it is installed.)
    tflm = sorted(m for m in sys.modules if m.split(".")[0] == "tflm")
    print(json.dumps({"results": results, "tflm_modules": tflm}))
    """
)


def _load_in_fresh_process(jobs):
    return helpers.run_python(["-c", LOAD_SCRIPT, json.dumps(jobs)])


def test_fresh_process_gives_the_text_of_generate():
    rows = helpers.ROWS
    sp_rows = helpers.ROWS[:5]
    report = _load_in_fresh_process(
        [
            (helpers.byte_export(), helpers.columnar(rows)),
            (helpers.sp_export(), helpers.columnar(sp_rows)),
        ]
    )
    assert report["tflm_modules"] == []
    for out, lm, used in zip(
        report["results"],
        (helpers.byte_model(), helpers.sp_model()),
        (rows, sp_rows),
        strict=True,
    ):
        expected = helpers.generate(lm, used)
        texts = [helpers.as_bytes(t) for t in out["text"]]
        assert [t.decode("utf-8", "replace") for t in texts] == expected[
            "outputs"
        ]
        assert [helpers.as_bytes(r) for r in out["stop_reason"]] == [
            r.encode() for r in expected["stop_reason"]
        ]
        assert out["num_tokens"] == expected["num_tokens"]


def test_sentencepiece_tokenizer_travels_as_an_asset():
    lm = helpers.sp_model()
    path = helpers.sp_export()
    with open(f"{path}/assets/sentencepiece.model", "rb") as f:
        assert f.read() == lm.tokenizer.model_proto
    with open(f"{path}/assets/tflm_config.json") as f:
        config = json.load(f)
    assert config["tokenizer"]["type"] == "sentencepiece"
    assert config["tokenizer"]["eos_id"] == lm.tokenizer.eos_id
    assert config["backbone"]["vocabulary_size"] == 300


def test_tfsm_layer_inside_a_keras_model():
    path = helpers.byte_export()
    names = ("prompt",) + helpers.SETTINGS
    dtypes = ("string", "int32", "float32", "int32", "float32", "int32")
    inputs = {
        n: keras.Input(shape=(), dtype=d, name=n)
        for n, d in zip(names, dtypes, strict=True)
    }
    generated = keras.layers.TFSMLayer(path, call_endpoint="serving_default")(
        inputs
    )
    scored = keras.layers.TFSMLayer(path, call_endpoint="score")(
        {"text": inputs["prompt"]}
    )
    model = keras.Model(
        inputs,
        {
            "text": generated["text"],
            "num_tokens": generated["num_tokens"],
            "log_likelihood": scored["log_likelihood"],
        },
    )
    rows = helpers.ROWS[:3]
    columns = list(zip(*rows, strict=True))
    feed = {
        n: tf.constant(list(c), d)
        for n, c, d in zip(names, columns, dtypes, strict=True)
    }
    out = model(feed)
    expected = helpers.generate(helpers.byte_model(), rows)
    texts = [t.decode("utf-8", "replace") for t in out["text"].numpy()]
    assert texts == expected["outputs"]
    assert out["num_tokens"].numpy().tolist() == expected["num_tokens"]
    assert np.all(out["log_likelihood"].numpy() < 0)
