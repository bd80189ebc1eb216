"""The served `chat` signature of a model with a template.

Inputs: `role` and `content`, string `[B, M]` (turns padded with empty
strings; roles `system`, `user`, `assistant`, the last one not
`assistant`), then `serving_default`'s controls (`max_new_tokens`,
`temperature`, `top_k`, `top_p`, `seed`, each `[B]`). Outputs: `text` (the
assistant's reply), `num_tokens`, `stop_reason`. The turns are rendered
through the model's template in the graph (`tflm.generation.templating`).
"""

from __future__ import annotations

import tensorflow as tf

from tflm import graph
from tflm.generation import frontend
from tflm.generation import settings as settings_lib
from tflm.generation import templating

TURNS = ("role", "content")
INPUTS = (*TURNS, *settings_lib.SERVING_DEFAULT)
_DTYPES = (tf.int32, tf.float32, tf.int32, tf.float32, tf.int32)


def _check(condition, message):
    return tf.debugging.Assert(condition, [message])


def function(module) -> tf.function:
    """The signature's `tf.function` for a `ServingModule`."""

    def chat(role, content, max_new_tokens, temperature, top_k, top_p, seed):
        """`chat`: the assistant's reply to each conversation `[B, M]`."""
        checks = [
            _check(
                tf.reduce_all(tf.equal(tf.shape(role), tf.shape(content))),
                "role and content must have the same shape [B, M]",
            ),
            templating.role_check(role),
        ]
        with tf.control_dependencies(checks):
            checks = [templating.last_check(role)]
        with tf.control_dependencies(checks):
            role, content = tf.identity(role), tf.identity(content)
        batch = tf.shape(role)[0]
        values = module._default_values(
            batch, max_new_tokens, temperature, top_k, top_p, seed
        )
        ragged, lengths = frontend.tokenize_turns(
            module.tokenizer, module.template, role, content, module.context
        )
        stop_ids = tf.fill([batch, 0], -1)
        result, _ = module._run_ids(ragged, lengths, values, None, stop_ids)
        return {k: result[k] for k in ("text", "num_tokens", "stop_reason")}

    turns = [tf.TensorSpec([None, None], tf.string, n) for n in TURNS]
    controls = [
        tf.TensorSpec([None], d, n)
        for n, d in zip(settings_lib.SERVING_DEFAULT, _DTYPES, strict=True)
    ]
    return graph.function(chat, input_signature=[*turns, *controls])
