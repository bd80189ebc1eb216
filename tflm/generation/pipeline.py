"""The one generation pipeline: request -> prepare -> decode -> finish.

`CausalLM.generate`/`stream` (through `tflm.generation.generator`), the CLI
and every exported signature (`tflm.export.signatures`) are this pipeline
with different request forms, so in-process and served generation cannot
drift:

- a `Request` holds the prompts in one of three forms (`Prompt`: text,
  token ids or conversations), every setting of `tflm.generation.spec`
  `[B]`, the stops, and `Beams` for beam search;
- `prepare` renders text and conversations through the model's template
  (`tflm.generation.templating`), tokenizes, cuts each row to the context
  before anything is dense, resolves the length settings, repeats each
  prompt `num_return_sequences` times (copy `j` samples with `seed + j`,
  mixed with a hash of the prompt's ids so that different prompts draw
  different streams), keeps each prompt and caps its new tokens at the room
  it leaves in the context (`spec.fit_context`), and left-pads;
  with `bucket=True` (in-process) the prompt width and cache length are
  rounded up to powers of two so that similar calls reuse one trace;
- `decode` builds the model's decode plan for a `Layout` (inside the
  calling trace) and runs the sampling loop or beam search;
- `finish` detokenizes, cuts text at stop strings and names the reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from tflm.generation import beam as beam_lib
from tflm.generation import loop
from tflm.generation import samplers
from tflm.generation import spec
from tflm.generation import templating
from tflm.generation import text as text_lib
from tflm.tokenizers import template_render
from tflm.tokenizers import templates

MIN_BUCKET = 8
SCORE_LOGITS = 2**25  # floats of logits `score` holds at once (128 MiB)


class Prompt(NamedTuple):
    """A batch of `B` prompts in one form; the other fields are `None`.

    Fields:
        text: string `[B]`.
        ids: int32 ragged `[B, None]`.
        role, content: string `[B, M]`, conversations ("" pads).
    """

    text: tf.Tensor | None = None
    ids: tf.RaggedTensor | None = None
    role: tf.Tensor | None = None
    content: tf.Tensor | None = None

    def batch_size(self):
        if self.text is not None:
            return tf.shape(self.text)[0]
        if self.ids is not None:
            return tf.cast(self.ids.nrows(), tf.int32)
        return tf.shape(self.role)[0]


class Request(NamedTuple):
    """One batch of work for the pipeline.

    Fields:
        prompt: a `Prompt`.
        settings: `spec.Settings`, every setting `[B]`.
        stop: string `[B, K]` stop strings ("" pads), or `None`.
        stop_ids: int32 `[B, N]` (-1 pads).
        beams: `beam.Beams` for beam search, or `None` (sampling).
    """

    prompt: Prompt
    settings: spec.Settings
    stop: tf.Tensor | None
    stop_ids: tf.Tensor
    beams: beam_lib.Beams | None = None


class Prepared(NamedTuple):
    """The loop's inputs, `R = B * num_return_sequences` rows.

    Fields:
        ids, mask: int32 `[R, P]`, left-padded prompts.
        cache_length: int32 scalar, `S`.
        settings: `loop.LoopSettings`.
        stop: string `[R, K]`, or `None`.
        prompt_index: int32 `[R]`, each row's prompt.
        truncated: bool `[R]`, the prompt was cut from the left.
        capped: bool `[R]`, fewer new tokens than asked fit beside the
            prompt in the context.
    """

    ids: tf.Tensor
    mask: tf.Tensor
    cache_length: tf.Tensor
    settings: loop.LoopSettings
    stop: tf.Tensor | None
    prompt_index: tf.Tensor
    truncated: tf.Tensor
    capped: tf.Tensor


class Response(NamedTuple):
    """The pipeline's answer, `R` rows (beam search: `B * num_return_sequences`,
    best first per prompt).

    Fields:
        text: string `[R]`, the continuation only (`None` without a
            tokenizer).
        token_ids: int32 `[R, M]`, padded.
        num_tokens: int32 `[R]`.
        stop_reason: string `[R]`, one of `loop.STOP_REASONS`.
        prompt_index: int32 `[R]`.
        score: float32 `[R]` for beam search, else `None`.
    """

    text: tf.Tensor | None
    token_ids: tf.Tensor
    num_tokens: tf.Tensor
    stop_reason: tf.Tensor
    prompt_index: tf.Tensor
    score: tf.Tensor | None = None


def bucket(length, cap):
    """The smallest power of two `>= length` (at least `MIN_BUCKET`),
    capped; on ints and int32 scalar tensors alike.

    Example:
    >>> bucket(9, 100), bucket(300, 100)
    (16, 100)
    """
    if isinstance(length, int):
        size = MIN_BUCKET
        while size < length:
            size *= 2
        return min(size, cap)
    size = tf.while_loop(
        lambda s: s < length, lambda s: s * 2, [tf.constant(MIN_BUCKET)]
    )[0]
    return tf.minimum(size, cap)


def dense_checked(ragged, extra: int, label: str):
    """`ragged` once `spec.cells_check` passes for it padded to its longest
    row plus `extra` (what a signature pads it into)."""
    width = tf.reduce_max(tf.concat([ragged.row_lengths(), [0]], 0)) + extra
    ok, message = spec.cells_check(ragged.nrows(), width, label)
    with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
        return tf.identity(ragged)


class Pipeline:
    """The pipeline for one model and tokenizer; see the module docstring.

    Args:
        decoding: `layout -> loop.Decoding`, e.g. `CausalLM.decoding`
            (called inside the trace that runs the loop).
        tokenizer: a `tflm.tokenizers.Tokenizer`, or `None` (ids only).
        template: the model's checked template, or `None`.
        context: the model's context length.
        vocabulary_size: the number of logits.
        eos_ids: more ids that end a reply, besides the tokenizer's end id
            and the template's end of turn (Llama 3's `<|eot_id|>`).
    """

    def __init__(
        self,
        decoding: Callable,
        tokenizer,
        template,
        context: int,
        vocabulary_size: int,
        eos_ids=(),
    ):
        self.decoding = decoding
        self.tokenizer = tokenizer
        self.template = templates.check(template)
        if self.template is not None:
            templates.check_tokenizer(self.template, tokenizer)
        self.context = int(context)
        self.vocabulary_size = int(vocabulary_size)
        has = tokenizer is not None
        # A checkpoint whose tokenizer starts text with its start id (Llama
        # 2's `<s>`) is prompted and scored that way; tflm's own models
        # start from the end id that separates their training documents.
        self.add_bos = has and tokenizer.add_bos
        start = (
            tokenizer.bos_id
            if self.add_bos
            else getattr(tokenizer, "eos_id", 0)
        )
        self.start_id = start if has else 0
        ends = [tokenizer.eos_id] if has else []
        ends += templating.end_ids(self.template, tokenizer)
        ends += [int(i) for i in eos_ids]
        self.eos_ids = tuple(dict.fromkeys(ends))
        self.pad_id = tokenizer.pad_id if has else 0

    # Prepare ----------------------------------------------------------------
    def tokenize(self, prompt: Prompt):
        """Each prompt's last `context` ids and its full length in ids:
        `(ragged int32 [B, None], lengths int32 [B])`."""
        if prompt.text is not None and self.template is None:
            keep = self.context - int(self.add_bos)
            ragged, lengths = self._clipped(prompt.text, keep, True)
            if self.add_bos:
                start = tf.fill([ragged.nrows(), 1], self.start_id)
                ragged = tf.concat([tf.cast(start, ragged.dtype), ragged], 1)
                lengths += 1
        else:
            ragged = prompt.ids
            if ragged is None:
                role, content = prompt.role, prompt.content
                if prompt.text is not None:
                    role, content = templating.prompt_turns(prompt.text)
                ragged, _ = template_render.render(
                    self.template, self.tokenizer, role, content
                )
            lengths = ragged.row_lengths()
            ragged = text_lib.clip_rows(ragged, self.context, True)
        return tf.cast(ragged, tf.int32), tf.cast(lengths, tf.int32)

    def _clipped(self, text, keep, from_end: bool):
        """Each text's ids cut to its last (or first) `keep` ids, and each
        text's full length in ids.

        The byte tokenizer makes one id per byte, so cutting the bytes
        first is exact and bounds the work by `keep` bytes a row. Other
        tokenizers see the whole text (a token can depend on text far from
        it); only their ids are cut.
        """
        if getattr(self.tokenizer, "one_id_per_byte", False):
            lengths = tf.strings.length(text)
            text = text_lib.clip_bytes(text, keep, from_end)
            ragged = self.tokenizer.tokenize(text)
        else:
            ragged = self.tokenizer.tokenize(text)
            lengths = ragged.row_lengths()
        return text_lib.clip_rows(ragged, keep, from_end), lengths

    def prepare(self, request: Request, bucket_shapes: bool) -> Prepared:
        """The loop's inputs from a request; see the module docstring."""
        ragged, lengths = self.tokenize(request.prompt)
        values, context = request.settings._asdict(), self.context
        batch = tf.shape(lengths)[0]
        n = tf.cond(
            batch > 0, lambda: values["num_return_sequences"][0], lambda: 1
        )
        asked = spec.max_new_tokens(values, tf.maximum(lengths, 1), context)
        new = spec.fit_context(asked, lengths, context)
        per_row = 1 if request.beams is None else request.beams.num_beams
        label = "prompt rows * " + (
            "num_return_sequences" if request.beams is None else "num_beams"
        )
        kept = tf.maximum(tf.minimum(lengths, context - new), 1)
        ok, message = spec.cells_check(
            batch * n * per_row,
            tf.reduce_max(tf.concat([kept, [1]], 0))
            + tf.reduce_max(tf.concat([new, [1]], 0)),
            label,
        )
        # Nothing is repeated or padded into a dense tensor before it.
        with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
            new, n = tf.identity(new), tf.identity(n)
        index = tf.repeat(tf.range(batch), n)
        rows = {k: tf.gather(values[k], index) for k in loop.PER_ROW}
        rows["seed"] = tf.bitwise.bitwise_xor(
            rows["seed"] + tf.tile(tf.range(n), [batch]),
            tf.gather(samplers.prompt_hash(ragged), index),
        )
        new = tf.gather(new, index)
        room = context - new
        width_fn = None
        if bucket_shapes:
            width_fn = lambda w: bucket(w, context)  # noqa: E731
        ids, mask = text_lib.left_pad(
            tf.gather(ragged, index), room, self.start_id, width_fn
        )
        cache_length = tf.shape(ids)[1] + tf.maximum(tf.reduce_max(new), 1)
        if bucket_shapes:
            cache_length = bucket(cache_length, 2 * context)
        settings = loop.LoopSettings(
            max_new_tokens=new,
            eos_ids=tf.constant(self.eos_ids, tf.int32, [len(self.eos_ids)]),
            stop_ids=tf.gather(request.stop_ids, index),
            pad_id=tf.constant(self.pad_id, tf.int32),
            **rows,
        )
        stop = request.stop
        return Prepared(
            ids=ids,
            mask=mask,
            cache_length=cache_length,
            settings=settings,
            stop=None if stop is None else tf.gather(stop, index),
            prompt_index=index,
            truncated=tf.gather(lengths, index) > room,
            capped=tf.gather(asked, index) > new,
        )

    # Decode -----------------------------------------------------------------
    def text_stop(self, stop):
        """The loop's `text_stop` for stop strings `[R, K]`, or `None`."""
        if stop is None:
            return None
        check = text_lib.text_stop(self.tokenizer.detokenize, stop)

        def maybe(tokens, num_tokens):
            return tf.cond(
                text_lib.longest(stop) > 0,
                lambda: check(tokens, num_tokens),
                lambda: tf.zeros_like(num_tokens, tf.bool),
            )

        return maybe

    def start(self, prepared: Prepared, layout):
        """`layout`'s `loop.Decoding` (its plan built here) and the empty
        cache for `prepared`."""
        decoding = self.decoding(layout)
        cache = decoding.init_cache(
            tf.shape(prepared.ids)[0], prepared.cache_length
        )
        return decoding, cache

    def decode(self, prepared: Prepared, layout, trim: bool = True):
        """The sampling loop over `layout`'s decode plan: `loop.LoopOutput`
        (`trim=False`: `S - P` wide, as XLA needs)."""
        decoding, cache = self.start(prepared, layout)
        return loop.generate(
            decoding,
            cache,
            prepared.ids,
            prepared.mask,
            prepared.settings,
            self.text_stop(prepared.stop),
            trim=trim,
        )

    def beam_search(self, prepared: Prepared, beams, layout):
        """Beam search over `layout`'s decode plan: `beam.BeamOutput`."""
        decoding, cache = self.start(prepared, layout)
        return beam_lib.generate(
            decoding,
            cache,
            prepared.ids,
            prepared.mask,
            prepared.settings,
            beams,
        )

    # Finish -----------------------------------------------------------------
    def finish(
        self, out: loop.LoopOutput, stop, prompt_index, score=None
    ) -> Response:
        """The `Response` of loop outputs (`stop`: `Prepared.stop`)."""
        reasons = tf.gather(tf.constant(loop.STOP_REASONS), out.stop_reason)
        text = None
        if self.tokenizer is not None:
            detokenize = self.tokenizer.detokenize
            ragged = tf.RaggedTensor.from_tensor(
                out.token_ids, lengths=out.num_tokens
            )
            text = detokenize(ragged)
            if stop is not None:
                stopped = tf.equal(out.stop_reason, loop.STOP_STRING)
                text = text_lib.cut(
                    detokenize,
                    text,
                    out.token_ids,
                    out.num_tokens,
                    stopped,
                    stop,
                )
        return Response(
            text=text,
            token_ids=out.token_ids,
            num_tokens=out.num_tokens,
            stop_reason=reasons,
            prompt_index=prompt_index,
            score=score,
        )

    def finish_beams(self, found: beam_lib.BeamOutput) -> Response:
        """The `Response` of beam search's best beams."""
        return self.finish(found.out, None, found.prompt_index, found.score)

    def run(self, request: Request, layout, decode=None) -> Response:
        """The whole pipeline in the calling graph (an exported signature).

        Args:
            request: a `Request`.
            layout: the decode plan's `Layout`.
            decode: optional `(prepared) -> loop.LoopOutput` to run the
                sampling loop instead of `self.decode` (e.g. an XLA-compiled
                function), for a request without stop strings.
        """
        prepared = self.prepare(request, bucket_shapes=False)
        if request.beams is not None:
            found = self.beam_search(prepared, request.beams, layout)
            return self.finish_beams(found)
        if decode is None or prepared.stop is not None:
            out = self.decode(prepared, layout)
        else:
            out = decode(prepared)
        return self.finish(out, prepared.stop, prepared.prompt_index)

    # The other signatures ---------------------------------------------------
    def score(self, text, layout):
        """Log-likelihood of each text after the start token (`start_id`):
        `(log_likelihood float32 [B], num_tokens int32 [B])`."""
        ragged = self.tokenize_clipped(text, self.context - 1, False)
        ragged = dense_checked(ragged, 1, "text rows")
        start = tf.fill([ragged.nrows(), 1], self.start_id)
        full = tf.concat([tf.cast(start, ragged.dtype), ragged], axis=1)
        # Padding is masked out; 0 is a valid index whatever `pad_id` is.
        ids = full.to_tensor(default_value=0)
        mask = tf.sequence_mask(full.row_lengths(), tf.shape(ids)[1], tf.int32)
        decoding = self.decoding(layout)
        cache = decoding.init_cache(tf.shape(ids)[0], tf.shape(ids)[1])
        hidden, _ = decoding.forward(ids, cache, 0, mask, loop.positions(mask))
        picked = self._target_log_probs(decoding, hidden[:, :-1], ids[:, 1:])
        weights = tf.cast(mask[:, 1:], tf.float32)
        return (
            tf.reduce_sum(picked * weights, axis=1),
            tf.cast(tf.reduce_sum(mask[:, 1:], axis=1), tf.int32),
        )

    def _target_log_probs(self, decoding, hidden, targets):
        """float32 `[B, T]`: each target's log-probability after `hidden`
        `[B, T, D]`, the head run on blocks of rows so that the logits held
        at once stay under `SCORE_LOGITS` floats (one row at least)."""
        shape = tf.shape(hidden, out_type=tf.int64)
        n, t = shape[0], shape[1]
        per_row = tf.maximum(t * self.vocabulary_size, 1)
        # At most the batch (no rows of padding beyond it), and one block of
        # one padding row for an empty batch (`map_fn` cannot stack none).
        block = tf.clip_by_value(SCORE_LOGITS // per_row, 1, tf.maximum(n, 1))
        blocks = tf.maximum((n + block - 1) // block, 1)
        pad = blocks * block - n
        hidden = tf.pad(hidden, [[0, pad], [0, 0], [0, 0]])
        targets = tf.pad(targets, [[0, pad], [0, 0]])

        def one(block_inputs):
            h, y = block_inputs
            log_probs = tf.nn.log_softmax(decoding.to_logits(h), axis=-1)
            return tf.gather(log_probs, y, batch_dims=2)

        picked = tf.map_fn(
            one,
            (
                tf.reshape(hidden, [blocks, block, t, shape[2]]),
                tf.reshape(targets, [blocks, block, t]),
            ),
            fn_output_signature=tf.TensorSpec([None, None], tf.float32),
            parallel_iterations=1,  # one block's logits at a time
        )
        return tf.reshape(picked, [blocks * block, t])[:n]

    def tokenize_clipped(self, text, keep, from_end: bool):
        """Each text's ids, cut to its last (or first) `keep` ids (see
        `_clipped`)."""
        return self._clipped(text, keep, from_end)[0]
