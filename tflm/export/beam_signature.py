"""The served `beam_search` signature (see `export/README.md`).

Every control is a required batched input: `prompt` string `[B]`,
`max_new_tokens`, `max_length` (int32, -1: not given), `num_beams`,
`num_return_sequences` (int32, the same for every prompt), `length_penalty`
float32 and `early_stopping` bool. Outputs are `[B * num_return_sequences]`
rows, best first per prompt: `text`, `token_ids`, `num_tokens`, `score`
(sum of log-probs / length ** length_penalty), `prompt_index`,
`stop_reason`. Plain graph, core ops: it serves under TF Serving.
"""

from __future__ import annotations

import tensorflow as tf

from tflm import graph
from tflm.generation import beam
from tflm.generation import beam_settings
from tflm.generation import frontend
from tflm.generation import settings as settings_lib

INPUTS = {
    "prompt": tf.string,
    "max_new_tokens": tf.int32,
    "max_length": tf.int32,
    "num_beams": tf.int32,
    "num_return_sequences": tf.int32,
    "length_penalty": tf.float32,
    "early_stopping": tf.bool,
}


def function(module) -> tf.function:
    """The signature's `tf.function` for a `ServingModule`."""

    def beam_search(
        prompt,
        max_new_tokens,
        max_length,
        num_beams,
        num_return_sequences,
        length_penalty,
        early_stopping,
    ):
        return run(
            module,
            prompt,
            max_new_tokens=max_new_tokens,
            max_length=max_length,
            num_beams=num_beams,
            num_return_sequences=num_return_sequences,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )

    specs = [tf.TensorSpec([None], d, n) for n, d in INPUTS.items()]
    return graph.function(beam_search, input_signature=specs)


def _first(x, batch):
    return tf.cond(batch > 0, lambda: x[0], lambda: tf.ones([], x.dtype))


def run(module, prompt, **given):
    """`prepare -> beam search -> finish` for a `ServingModule`."""
    batch = tf.shape(prompt)[0]
    lengths = {k: given[k] for k in ("max_new_tokens", "max_length")}
    values = settings_lib.fill_defaults(lengths, batch)
    beams = {k: v for k, v in given.items() if k not in lengths}
    checks = settings_lib.graph_checks(values, None, None, batch)
    checks += beam_settings.graph_checks(beams, batch)
    with tf.control_dependencies(checks):
        values = {k: tf.identity(v) for k, v in values.items()}
    ragged, prompt_lengths = frontend.tokenize(
        module.tokenizer, prompt, module.context
    )
    tok = module.tokenizer
    config = {
        "context": module.context,
        "start_id": tok.eos_id,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "bucket": False,
    }
    stop_ids = tf.fill([batch, 0], -1)
    prepared = frontend.prepare(
        ragged, prompt_lengths, values, None, stop_ids, config
    )
    ids = prepared["ids"]
    backbone = module.model.backbone
    out = beam.generate(
        backbone.call_with_cache,
        module.model.logits_from_hidden,
        backbone.init_cache(tf.shape(ids)[0], prepared["cache_length"]),
        ids,
        prepared["mask"],
        prepared["settings"],
        _first(beams["num_beams"], batch),
        beams["length_penalty"],
        beams["early_stopping"],
        _first(beams["num_return_sequences"], batch),
    )
    loop_out = {k: out[k] for k in ("token_ids", "num_tokens", "stop_reason")}
    result = frontend.finish(tok.detokenize, loop_out, None)
    index = out["prompt_index"]
    return {**result, "score": out["score"], "prompt_index": index}
