"""In-process generation: the pipeline traced for `CausalLM.generate` and
`stream`.

`Generator` traces the pipeline's `prepare` once per prompt form (its inputs
have dynamic shapes), the decode loop per `(rows, prompt bucket, cache
bucket)` so that calls with similar prompts reuse one trace, and `finish`
once. The loop runs under XLA with `jit_compile=True` except with stop
strings (they detokenize inside the loop) and while streaming.

`generate` and `stream` run it on Python arguments (checked by
`tflm.generation.arguments` against the spec the exported signatures check
in their graph). Output follows input: strings for strings, lists of ids
for ids; a single prompt with one return sequence gives a single result,
else a flat list, prompt by prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from collections.abc import Sequence

import tensorflow as tf

from tflm import errors
from tflm import graph
from tflm.generation import arguments
from tflm.generation import beam as beam_lib
from tflm.generation import loop
from tflm.generation import pipeline as pipeline_lib
from tflm.generation import spec
from tflm.generation import templating
from tflm.generation import text as text_lib

logger = logging.getLogger("tflm")

_SETTINGS = {s.name: tf.TensorSpec([None], s.dtype, s.name) for s in spec.SPEC}
_STOP = tf.TensorSpec([None, None], tf.string, "stop")
_STOP_IDS = tf.TensorSpec([None, None], tf.int32, "stop_ids")
_TURNS = tf.TensorSpec([None, None], tf.string)
_IDS = tf.RaggedTensorSpec([None, None], tf.int32, 1, tf.int64)


class Generator:
    """The pipeline of one model, traced for in-process calls.

    Args:
        pipeline: a `tflm.generation.pipeline.Pipeline`.
        jit_compile: compile the loop with XLA (not with stop strings).
        layouts: `(backend, relayout) -> Layout`, the model's decode plan
            layouts (e.g. `tflm.models.decode_plan.Layout`).
    """

    def __init__(self, pipeline, jit_compile: bool, layouts):
        self.pipeline = pipeline
        self.jit_compile = bool(jit_compile)
        self.layouts = layouts
        self.trace_count = 0
        common = [_SETTINGS, _STOP, _STOP_IDS]
        self._prepare_text = graph.function(
            lambda text, *rest: self._prepare(
                pipeline_lib.Prompt(text=text), *rest
            ),
            input_signature=[tf.TensorSpec([None], tf.string), *common],
        )
        self._prepare_chat = graph.function(
            lambda role, content, *rest: self._prepare(
                pipeline_lib.Prompt(role=role, content=content), *rest
            ),
            input_signature=[_TURNS, _TURNS, *common],
        )
        self._prepare_ids = graph.function(
            lambda ids, *rest: self._prepare(
                pipeline_lib.Prompt(ids=ids), *rest
            ),
            input_signature=[_IDS, *common],
        )
        backend = "xla" if jit_compile else "graph"
        self._run = graph.function(
            lambda p: self._decode(p, backend), jit_compile=jit_compile
        )
        self._run_text = graph.function(lambda p: self._decode(p, "graph"))
        self._beam = graph.function(
            lambda p, b: self._beam_search(p, b, backend),
            jit_compile=jit_compile,
        )
        self._prefill = graph.function(self._prefill_graph)
        # `finish` runs in the plain graph on any shapes: one relaxed trace
        # rather than one per output width.
        self._chunk = graph.function(self._chunk_graph)
        self._finish = graph.function(self._finish_graph, reduce_retracing=True)
        self._finish_beams = graph.function(
            self._finish_beams_graph, reduce_retracing=True
        )

    # Graph functions --------------------------------------------------------
    def _prepare(self, prompt, settings, stop, stop_ids):
        self.trace_count += 1
        request = pipeline_lib.Request(
            prompt, spec.Settings(**settings), stop, stop_ids
        )
        return self.pipeline.prepare(request, bucket_shapes=True)

    def _decode(self, prepared, backend):
        self.trace_count += 1
        layout = self.layouts(backend, True)
        return self.pipeline.decode(prepared, layout, trim=False)

    def _beam_search(self, prepared, beams, backend):
        self.trace_count += 1
        return self.pipeline.beam_search(
            prepared, beams, self.layouts(backend, True)
        )

    def _prefill_graph(self, prepared):
        self.trace_count += 1
        # Streaming runs the loop in chunks: layouts as stored (a transpose
        # would run at every chunk).
        layout = self.layouts("graph", False)
        decoding, cache = self.pipeline.start(prepared, layout)
        return loop.prefill(
            decoding, cache, prepared.ids, prepared.mask, prepared.settings
        )

    def _chunk_graph(self, state, const, max_steps, stop):
        self.trace_count += 1
        decoding = self.pipeline.decoding(self.layouts("graph", False))
        text_stop = self.pipeline.text_stop(stop)
        state = loop.decode(decoding, state, const, max_steps, text_stop)
        return state, loop.finish(state, trim=False)

    def _finish_graph(self, out, stop, prompt_index):
        self.trace_count += 1
        return self.pipeline.finish(out, stop, prompt_index)

    def _finish_beams_graph(self, found):
        self.trace_count += 1
        return self.pipeline.finish_beams(found)

    # Python side ------------------------------------------------------------
    def prepare(self, prompts, settings, stop, stop_ids):
        """`Pipeline.prepare` on strings `[B]`, ragged ids, or
        conversations as a `(role, content)` pair `[B, M]`."""
        if isinstance(prompts, tuple):
            return self._prepare_chat(*prompts, settings, stop, stop_ids)
        if isinstance(prompts, tf.RaggedTensor):
            return self._prepare_ids(prompts, settings, stop, stop_ids)
        return self._prepare_text(prompts, settings, stop, stop_ids)

    @staticmethod
    def _static(prepared, has_stop):
        # The cache length as an int: a trace per bucket, static shapes.
        return prepared._replace(
            cache_length=int(prepared.cache_length),
            stop=prepared.stop if has_stop else None,
        )

    def run(self, prepared, has_stop: bool) -> pipeline_lib.Response:
        """The sampling loop and `finish`: eager tensors."""
        prepared = self._static(prepared, has_stop)
        run = self._run_text if has_stop else self._run
        out = run(prepared)
        return self._finish(out, prepared.stop, prepared.prompt_index)

    def run_beam(self, prepared, beams: dict) -> pipeline_lib.Response:
        """Beam search and `finish`; `beams`: `num_beams`,
        `num_return_sequences`, `length_penalty`, `early_stopping`."""
        prepared = self._static(prepared, False)
        batch = int(tf.shape(prepared.ids)[0])
        found = self._beam(
            prepared,
            beam_lib.Beams(
                num_beams=int(beams["num_beams"]),
                num_return_sequences=int(beams["num_return_sequences"]),
                length_penalty=tf.fill([batch], float(beams["length_penalty"])),
                early_stopping=tf.fill([batch], bool(beams["early_stopping"])),
            ),
        )
        return self._finish_beams(found)

    def steps(self, prepared, has_stop: bool, chunk: int):
        """Yields `(loop output, finished)` after every `chunk` steps."""
        prepared = self._static(prepared, has_stop)
        state, const = self._prefill(prepared)
        chunk = tf.constant(chunk)
        while True:
            state, out = self._chunk(state, const, chunk, prepared.stop)
            finished = bool(loop.finished(state, const))
            yield out, finished
            if finished:
                return

    def finish(self, out, prepared, has_stop: bool):
        """`Pipeline.finish` on loop outputs."""
        stop = prepared.stop if has_stop else None
        return self._finish(out, stop, prepared.prompt_index)


def generate(
    generator, prompts, max_new_tokens=None, *, return_details=False, **kw
):
    """Continues each prompt; see `CausalLM.generate` for the arguments."""
    beams = arguments.pop_beams(kw)
    if beams is not None:
        kw["num_return_sequences"] = 1  # beam search returns several
    prepared, single, is_text, strings = arguments.setup(
        generator,
        prompts,
        {"max_new_tokens": max_new_tokens, **kw},
        num_beams=1 if beams is None else beams["num_beams"],
    )
    if not single and int(tf.shape(prepared.ids)[0]) == 0:
        return [] if not return_details else {"outputs": []}
    if beams is None:
        out = generator.run(prepared, bool(strings))
    else:
        out = generator.run_beam(prepared, beams)
    counts = out.num_tokens.numpy().tolist()
    ids = [
        row[:n].tolist()
        for row, n in zip(out.token_ids.numpy(), counts, strict=True)
    ]
    outputs = ids
    if is_text:
        outputs = [t.decode("utf-8", "replace") for t in out.text.numpy()]
    one = single and len(outputs) == 1
    if not return_details:
        return outputs[0] if one else outputs
    return {
        "outputs": outputs[0] if one else outputs,
        "token_ids": ids,
        "num_tokens": counts,
        "stop_reason": [r.decode() for r in out.stop_reason.numpy()],
        "prompt_index": out.prompt_index.numpy().tolist(),
        **({} if beams is None else {"score": out.score.numpy().tolist()}),
    }


def stream(
    generator, prompt, max_new_tokens=None, *, chunk: int = 1, **kw
) -> Iterator[str]:
    """Yields pieces of one prompt's continuation as they are produced.

    Runs the plain graph: joined, the pieces equal `generate` with the same
    settings. Text is detokenized incrementally (each token a bounded number
    of times: linear in the output), pieces end on whole characters, and
    text that may begin a stop string waits until it is known not to.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise errors.InputError(
            f"chunk must be an int >= 1. Received: {chunk!r}."
        )
    one_chat = isinstance(prompt, Sequence) and all(
        map(templating.is_turn, prompt)
    )
    if (
        not (isinstance(prompt, str) or (one_chat and prompt))
        or generator.pipeline.tokenizer is None
    ):
        raise errors.InputError(
            "stream takes one text prompt or one conversation and needs a "
            "tokenizer."
        )
    if arguments.pop_beams(kw) is not None:
        raise errors.InputError(
            "stream does not support beam search; use generate with "
            "num_beams > 1."
        )
    if kw.get("num_return_sequences", 1) != 1:
        raise errors.InputError(
            "stream makes one sequence. Received: num_return_sequences="
            f"{kw['num_return_sequences']}; use generate for several."
        )
    prepared, _, _, strings = arguments.setup(
        generator, prompt, {"max_new_tokens": max_new_tokens, **kw}
    )
    hold = max((len(s) for s in strings), default=1) - 1
    text = text_lib.Incremental(generator.pipeline.tokenizer)
    sent, out = "", None
    for out, finished in generator.steps(prepared, bool(strings), chunk):
        if finished:
            break  # the rest comes from `finish`, cut at a stop string
        n = int(out.num_tokens[0])
        ready = text.update(out.token_ids[0, :n].numpy())
        ready = ready[: len(ready) - hold] if hold else ready
        if len(ready) > len(sent):
            yield ready[len(sent) :]
            sent = ready
    final = generator.finish(out, prepared, bool(strings)).text[0]
    final = final.numpy().decode("utf-8", "replace")
    if len(final) > len(sent):
        yield final[len(sent) :]
