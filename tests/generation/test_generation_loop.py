"""The decode loop under TF Serving's conditions: TF1 `Session`, no XLA."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from tflm.generation import loop
from tflm.models.causal_lm import CausalLM

MODEL_ARGS = dict(
    vocabulary_size=259, max_sequence_length=64, tie_embeddings=False
)
IDS = [[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]]
MASK = [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
# Row 0 greedy, row 1 sampled with top-k and top-p.
SETTINGS = dict(
    max_new_tokens=[10, 6],
    temperature=[0.0, 1.0],
    top_k=[0, 50],
    top_p=[1.0, 0.9],
    seed=[0, 7],
)
CACHE_LENGTH = 32


def _varied_model():
    """Random weights large enough that greedy text is not one repeated id."""
    lm = CausalLM.from_preset("tiny", **MODEL_ARGS)
    rng = np.random.default_rng(0)
    for v in lm.weights:
        if len(v.shape) == 2:
            std = 1.0 if "embedding" in v.path else 1.5 / np.sqrt(v.shape[0])
            v.assign(rng.normal(0, std, v.shape).astype("float32"))
        else:
            v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype("float32"))
    return lm


def _settings():
    return loop.LoopSettings.make(**SETTINGS, stop_ids=[-1] * 4)


# Runs in a fresh interpreter: XLA disabled as TF Serving does, graph mode.
SCRIPT = textwrap.dedent(
    """
    import ctypes, json, os, sys
    import numpy as np
    import tensorflow as tf

    lib = ctypes.CDLL(
        os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2")
    )
    lib._ZN10tensorflow21DisableXlaCompilationEv()
    result = {}
    # Eagerly, a jit_compile function must now fail.
    try:
        tf.function(lambda x: x * 2.0, jit_compile=True)(tf.constant(1.0))
        result["eager_xla_error"] = None
    except Exception as e:  # noqa: BLE001
        result["eager_xla_error"] = str(e)
    tf.compat.v1.disable_eager_execution()

    from tflm.generation import loop
    from tflm.models.causal_lm import CausalLM

    args = json.loads(sys.argv[1])
    saved = np.load(args["weights"])
    weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    result["eager"] = tf.executing_eagerly()
    with tf.Graph().as_default():
        lm = CausalLM.from_preset("tiny", **args["model"])
        settings = loop.LoopSettings.make(
            **args["settings"], stop_ids=[-1] * 4
        )
        decoding = lm.decoding()
        out = loop.generate(
            decoding,
            decoding.init_cache(2, args["cache_length"]),
            tf.constant(args["ids"]),
            tf.constant(args["mask"]),
            settings,
        )
        assigns = [v.value.assign(w) for v, w in zip(lm.weights, weights)]
        xla_fn = tf.function(lambda x: tf.sin(x) * 2.0, jit_compile=True)
        xla_out = xla_fn(tf.constant(1.0))
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(assigns)
            loaded = sess.run([v.value for v in lm.weights])
            result["weights_equal"] = len(loaded) == len(weights) and all(
                np.array_equal(a, b) for a, b in zip(loaded, weights)
            )
            result.update(
                {k: v.tolist() for k, v in sess.run(out)._asdict().items()}
            )
        # A plain Session runs a jit_compile function without XLA; with
        # auto-clustering on it asks XLA to compile, which must now fail.
        jit = tf.compat.v1.OptimizerOptions(
            global_jit_level=tf.compat.v1.OptimizerOptions.ON_1
        )
        config = tf.compat.v1.ConfigProto(
            graph_options=tf.compat.v1.GraphOptions(optimizer_options=jit)
        )
        with tf.compat.v1.Session(config=config) as sess:
            try:
                sess.run(xla_out)
                result["xla_error"] = None
            except Exception as e:  # noqa: BLE001
                result["xla_error"] = str(e)
    print("RESULT " + json.dumps(result))
    """
)


def test_loop_runs_in_tf1_session_without_xla(tmp_path):
    lm = _varied_model()
    weights_path = str(tmp_path / "weights.npz")
    np.savez(weights_path, *lm.get_weights())
    script = tmp_path / "session_generate.py"
    script.write_text(SCRIPT)
    args = dict(
        weights=weights_path,
        model=MODEL_ARGS,
        settings=SETTINGS,
        ids=IDS,
        mask=MASK,
        cache_length=CACHE_LENGTH,
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    graph = json.loads(lines[-1][len("RESULT ") :])

    assert graph["eager"] is False
    assert graph["weights_equal"]
    assert graph["num_tokens"] == SETTINGS["max_new_tokens"]
    assert graph["stop_reason"] == [loop.STOP_REASONS.index("length")] * 2
    for key in ("eager_xla_error", "xla_error"):
        assert graph[key] is not None, key
        assert "XLA compilation disabled" in graph[key]

    # The same weights and inputs in-process (eager state, one tf.function).
    @tf.function
    def run():
        decoding = lm.decoding()
        return loop.generate(
            decoding,
            decoding.init_cache(2, CACHE_LENGTH),
            tf.constant(IDS),
            tf.constant(MASK),
            _settings(),
        )

    local = {k: v.numpy().tolist() for k, v in run()._asdict().items()}
    assert local == {k: graph[k] for k in local}
    # Greedy text is not degenerate, so the comparison means something.
    assert len(set(local["token_ids"][0])) > 2
    # Row 1 stopped at 6 tokens; its remaining slots are padding.
    assert local["token_ids"][1][6:] == [0] * 4


def test_decode_in_chunks_equals_one_call():
    lm = _varied_model()

    decoding = lm.decoding()  # eagerly: no plan reads, scatter writes

    def parts():
        cache = decoding.init_cache(2, CACHE_LENGTH)
        return (decoding, cache, tf.constant(IDS), tf.constant(MASK))

    whole = loop.generate(*parts(), _settings())
    state, const = loop.prefill(*parts(), _settings())
    chunks = 0
    while not bool(loop.finished(state, const)):
        state = loop.decode(decoding, state, const, max_steps=3)
        chunks += 1
    assert chunks == 4  # 10 steps, 3 at a time
    pieces = loop.finish(state)
    for a, b in zip(pieces, whole, strict=True):
        np.testing.assert_array_equal(a, b)
    assert pieces.num_tokens.numpy().tolist() == [10, 6]


def _op_types(concrete):
    """Op type of every node of a concrete function, its loop bodies and
    the other functions it calls."""
    graph_def = concrete.graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return [node.op for node in nodes]


def test_in_place_decode_equals_the_scatter_and_keeps_its_input():
    from tflm.models import decode_plan

    lm = _varied_model()
    layers = len(lm.backbone.blocks)
    graph_layout = decode_plan.Layout("graph")  # writes in place
    xla_layout = decode_plan.Layout("xla")  # scatter, run in the plain graph

    @tf.function(autograph=False)
    def prefill():
        decoding = lm.decoding(decode_plan.Layout("graph", relayout=False))
        cache = decoding.init_cache(2, CACHE_LENGTH)
        return loop.prefill(
            decoding, cache, tf.constant(IDS), MASK, _settings()
        )

    def decoder(layout):
        @tf.function(autograph=False)
        def decode(state, const):
            decoding = lm.decoding(layout)
            state = loop.decode(decoding, state, const)
            return state.cache, loop.finish(state)

        return decode

    state, const = prefill()
    before = [c.numpy() for c in state.cache]
    in_place, scatter = decoder(graph_layout), decoder(xla_layout)
    cache, out = in_place(state, const)
    cache_s, out_s = scatter(state, const)
    for a, b in zip(out, out_s, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(cache, cache_s, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The caller's cache is not the one written to: decoding again from the
    # same state gives the same tokens, and its cache still holds the prompt.
    for c, b in zip(state.cache, before, strict=True):
        np.testing.assert_array_equal(c.numpy(), b)
    again = in_place(state, const)[1]
    np.testing.assert_array_equal(again.token_ids, out.token_ids)
    assert out.num_tokens.numpy().tolist() == [10, 6]
    # One in-place write per layer and step, on one copy per layer.
    ops = _op_types(in_place.get_concrete_function(state, const))
    assert ops.count("InplaceUpdate") == layers
    assert ops.count("DeepCopy") == layers
    scatter_ops = _op_types(scatter.get_concrete_function(state, const))
    assert "InplaceUpdate" not in scatter_ops
    # The weights are read once, before the loop (the decode plan's reads).
    concrete = in_place.get_concrete_function(state, const)
    library = concrete.graph.as_graph_def().library
    bodies = [f for f in library.function if "while_body" in f.signature.name]
    assert bodies
    for body in bodies:
        assert "ReadVariableOp" not in [n.op for n in body.node_def]
