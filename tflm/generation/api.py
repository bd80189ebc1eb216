"""In-process generation: `Generator`, the graphs `generate` and `stream` run.

A `Generator` takes a model by what generation needs (a cached forward
step, the output head, a cache factory, the context, the vocabulary size)
and a tokenizer, and runs the same `frontend.prepare -> loop -> finish` as
the exported signatures. `prepare` and `finish` are traced once (their
inputs have dynamic shapes); the loop is traced per `(rows, prompt bucket,
cache bucket)`, so calls with similar prompts reuse one trace. Stop strings
detokenize inside the loop, so a call with stop strings runs the plain graph
even where `jit_compile=True`.
"""

from __future__ import annotations

import tensorflow as tf

from tflm import graph
from tflm.generation import beam
from tflm.generation import frontend
from tflm.generation import loop
from tflm.generation import samplers
from tflm.generation import settings as settings_lib
from tflm.generation import templating

_SPECS = {
    s.name: tf.TensorSpec([None], s.dtype, s.name) for s in settings_lib.SPEC
}
_STOP_SPEC = tf.TensorSpec([None, None], tf.string, "stop")
_STOP_IDS_SPEC = tf.TensorSpec([None, None], tf.int32, "stop_ids")


class Generator:
    """Compiled generation for one model and tokenizer.

    Args:
        forward: `(token_ids, cache, cache_index, padding_mask,
            position_ids) -> (hidden, cache)`, e.g.
            `Backbone.call_with_cache`.
        to_logits: hidden `[B, D]` -> float32 logits `[B, V]`.
        init_cache: `(batch, length) -> cache`.
        context: the model's context length.
        vocabulary_size: the number of logits.
        tokenizer: a `tflm.tokenizers.Tokenizer`, or `None` (ids only).
        jit_compile: compile the loop with XLA (not with stop strings).
        template: the model's prompt template (`config.json["template"]`),
            applied to text prompts and conversations; `None`: none.
    """

    def __init__(
        self,
        forward,
        to_logits,
        init_cache,
        context: int,
        vocabulary_size: int,
        tokenizer=None,
        jit_compile: bool = True,
        template=None,
    ):
        self.forward, self.to_logits = forward, to_logits
        self.init_cache = init_cache
        self.context = int(context)
        self.vocabulary_size = int(vocabulary_size)
        self.tokenizer = tokenizer
        self.jit_compile = bool(jit_compile)
        self.template = templating.check(template)
        self.trace_count = 0
        self.strategy = samplers.Sampling()
        common = [_SPECS, _STOP_SPEC, _STOP_IDS_SPEC]
        self._prepare_text = graph.function(
            self._prepare_text_graph,
            input_signature=[tf.TensorSpec([None], tf.string), *common],
        )
        turns = tf.TensorSpec([None, None], tf.string)
        self._prepare_chat = graph.function(
            self._prepare_chat_graph, input_signature=[turns, turns, *common]
        )
        ids_spec = tf.RaggedTensorSpec([None, None], tf.int32, 1, tf.int64)
        self._prepare_ids = graph.function(
            self._prepare_ids_graph, input_signature=[ids_spec, *common]
        )
        self._run = graph.function(
            self._run_xla_graph if jit_compile else self._run_graph,
            jit_compile=jit_compile,
        )
        self._run_text = graph.function(self._run_graph)
        self._prefill = graph.function(self._prefill_graph)
        self._decode = graph.function(self._decode_graph)
        self._finish = graph.function(self._finish_graph)
        self._beam = graph.function(self._beam_graph, jit_compile=jit_compile)

    # Graph functions -------------------------------------------------------
    def _config(self):
        tok = self.tokenizer
        return {
            "context": self.context,
            "start_id": tok.eos_id if tok is not None else 0,
            "eos_id": tok.eos_id if tok is not None else -1,
            "pad_id": tok.pad_id if tok is not None else 0,
            "bucket": True,
        }

    def _prepare_text_graph(self, text, values, stop, stop_ids):
        self.trace_count += 1
        ragged, lengths = frontend.tokenize_prompts(
            self.tokenizer, self.template, text, self.context
        )
        return frontend.prepare(
            ragged, lengths, values, stop, stop_ids, self._config()
        )

    def _prepare_chat_graph(self, role, content, values, stop, stop_ids):
        self.trace_count += 1
        ragged, lengths = frontend.tokenize_turns(
            self.tokenizer, self.template, role, content, self.context
        )
        return frontend.prepare(
            ragged, lengths, values, stop, stop_ids, self._config()
        )

    def _prepare_ids_graph(self, ragged, values, stop, stop_ids):
        self.trace_count += 1
        ragged = frontend.clipping.clip_rows(ragged, self.context, True)
        lengths = tf.cast(ragged.row_lengths(), tf.int32)
        # The length before the cut; ids prompts come in whole.
        return frontend.prepare(
            ragged, lengths, values, stop, stop_ids, self._config()
        )

    def _detokenize(self):
        return None if self.tokenizer is None else self.tokenizer.detokenize

    def _text_stop(self, stop):
        return frontend.text_stop(self._detokenize(), stop)

    def _prefill_graph(self, ids, mask, settings, cache_length):
        self.trace_count += 1
        cache = self.init_cache(tf.shape(ids)[0], cache_length)
        return loop.prefill(
            self.forward,
            self.to_logits,
            cache,
            ids,
            mask,
            settings,
            self.strategy,
        )

    def _run_graph(self, ids, mask, settings, cache_length, stop=None):
        state = self._prefill_graph(ids, mask, settings, cache_length)
        state = self._decode_state(state, None, stop, layout="graph")
        return loop.finish(state, trim=False)

    def _run_xla_graph(self, ids, mask, settings, cache_length):
        # XLA has no in-place cache write; its own scatter is in place.
        state = self._prefill_graph(ids, mask, settings, cache_length)
        state = self._decode_state(
            state, None, None, in_place=False, layout="xla"
        )
        return loop.finish(state, trim=False)

    def _decode_state(self, state, max_steps, stop, in_place=True, layout=None):
        # `layout`: `tflm.layers.matvec`'s, for a whole loop in one call
        # (streaming's chunks would transpose the weights at every chunk).
        return loop.decode(
            self.forward,
            self.to_logits,
            state,
            max_steps,
            self.strategy,
            self._text_stop(stop),
            in_place=in_place,
            layout=layout,
        )

    def _decode_graph(self, state, max_steps, stop=None):
        self.trace_count += 1
        state = self._decode_state(state, max_steps, stop)
        return state, loop.finish(state, trim=False)

    def _finish_graph(self, out, stop=None):
        self.trace_count += 1
        return frontend.finish(self._detokenize(), out, stop)

    def _beam_graph(self, ids, mask, settings, cache_length, beams):
        self.trace_count += 1
        cache = self.init_cache(tf.shape(ids)[0], cache_length)
        return beam.generate(
            self.forward,
            self.to_logits,
            cache,
            ids,
            mask,
            settings,
            beams["num_beams"],
            beams["length_penalty"],
            beams["early_stopping"],
            beams["num_return_sequences"],
            layout="xla" if self.jit_compile else "graph",
        )

    # Python side -----------------------------------------------------------
    def prepare(self, prompts, values, stop, stop_ids):
        """Runs `frontend.prepare` on strings `[B]`, ragged ids, or
        conversations as a `(role, content)` pair `[B, M]`."""
        if isinstance(prompts, tuple):
            return self._prepare_chat(*prompts, values, stop, stop_ids)
        if isinstance(prompts, tf.RaggedTensor):
            return self._prepare_ids(prompts, values, stop, stop_ids)
        return self._prepare_text(prompts, values, stop, stop_ids)

    def run(self, prepared, has_stop: bool) -> dict:
        """The whole loop and `finish`: eager tensors."""
        cache_length = int(prepared["cache_length"])
        args = (prepared["ids"], prepared["mask"], prepared["settings"])
        if has_stop:
            stop = prepared["stop"]
            out = self._run_text(*args, cache_length, stop)
        else:
            stop = None
            out = self._run(*args, cache_length)
        return self._finish(out, stop)

    def run_beam(self, prepared, beams: dict) -> dict:
        """Beam search and `finish`; `beams`: `num_beams`,
        `num_return_sequences` (ints), `length_penalty` float32 `[B]`,
        `early_stopping` bool `[B]`. Adds `score` and `prompt_index`."""
        out = self._beam(
            prepared["ids"],
            prepared["mask"],
            prepared["settings"],
            int(prepared["cache_length"]),
            beams,
        )
        result = self._finish(
            {k: out[k] for k in ("token_ids", "num_tokens", "stop_reason")}
        )
        return {**result, "score": out["score"], "index": out["prompt_index"]}

    def steps(self, prepared, has_stop: bool, chunk: int):
        """Yields `(loop outputs, finished)` after every `chunk` steps."""
        stop = prepared["stop"] if has_stop else None
        state = self._prefill(
            prepared["ids"],
            prepared["mask"],
            prepared["settings"],
            int(prepared["cache_length"]),
        )
        chunk = tf.constant(chunk)
        while True:
            state, out = self._decode(state, chunk, stop)
            finished = bool(loop.finished(state))
            yield out, finished
            if finished:
                return

    def finish(self, out, has_stop: bool, prepared) -> dict:
        """`frontend.finish` on loop outputs."""
        return self._finish(out, prepared["stop"] if has_stop else None)
