"""The serving contract's signatures, as a `tf.Module`.

Everything here is core TensorFlow (plus the tokenizer's TF Text ops), so the
SavedModel runs under stock TF Serving, which disables XLA and loads no
Python. Inputs are validated in the graph: bad values fail the request with
an `InvalidArgument` error that names the input.
"""

from __future__ import annotations

import tensorflow as tf

from tflm import graph
from tflm.export import beam_signature
from tflm.export import chat_signature
from tflm.generation import clipping
from tflm.generation import frontend
from tflm.generation import loop
from tflm.generation import samplers
from tflm.generation import settings as settings_lib
from tflm.generation import templating
from tflm.models import backbone as backbone_lib

GENERATE_INPUTS = ("prompt", *settings_lib.SERVING_DEFAULT)
CHAT_INPUTS = chat_signature.INPUTS
# The full-control `generate` signature: every setting, then the stops.
FULL_INPUTS = (
    "prompt",
    *(s.name for s in settings_lib.SPEC),
    "stop",
    "stop_ids",
)


def _check(condition, message):
    return tf.debugging.Assert(condition, [message])


class ServingModule(tf.Module):
    """Tracks a `CausalLM` and its tokenizer; exposes the signatures.

    Args:
        model: a `tflm.models.CausalLM`.
        tokenizer: a `tflm.tokenizers.Tokenizer`.
        jit_compile: run the decode loop under XLA (TF Serving then needs
            `--xla_cpu_compilation_enabled=true`).
    """

    def __init__(self, model, tokenizer, jit_compile: bool = False):
        super().__init__(name="tflm")
        self._keep_untracked(model)
        self.tokenizer = tokenizer
        self.context = int(model.backbone.max_sequence_length)
        # A fine-tuned model's template: prompts are rendered into it, and
        # the `chat` signature exists (see `tflm.generation.templating`).
        self.template = templating.check(getattr(model, "template", None))
        # XLA has no in-place cache write (its own scatter is in place).
        self._decode = graph.function(
            self._decode_xla_graph if jit_compile else self._decode_graph,
            jit_compile=jit_compile,
        )
        self._decode_text = graph.function(self._decode_graph)
        self._functions = self._signature_functions()
        # Dict-in, dict-out twins of the signatures (the Keras convention),
        # so that `keras.layers.TFSMLayer(path, call_endpoint=name)` can call
        # them: it passes one positional argument, which signatures refuse.
        for name, function in self._functions.items():
            setattr(self, name, _dict_endpoint(function))
        # The variables the functions read, tracked so that the SavedModel's
        # checkpoint restores exactly those (see `_keep_untracked`).
        self.serving_variables = _variables_of(self.signatures().values())

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _keep_untracked(self, model):
        # The SavedModel must not track the Keras model: a Keras variable
        # exports a second copy of itself, and under TF1 loading (TF Serving)
        # the checkpoint restores that copy while the functions read the
        # original, which fails with "Could not find variable". The
        # variables the functions use are tracked instead.
        self.model = model

    def _decode_graph(self, ids, mask, cache_length, settings, stop=None):
        return self._generate(ids, mask, cache_length, settings, stop, True)

    def _decode_xla_graph(self, ids, mask, cache_length, settings):
        return self._generate(ids, mask, cache_length, settings, None, False)

    def _generate(self, ids, mask, cache_length, settings, stop, in_place):
        cache = self.model.backbone.init_cache(tf.shape(ids)[0], cache_length)
        return loop.generate(
            self.model.backbone.call_with_cache,
            self.model.logits_from_hidden,
            cache,
            ids,
            mask,
            settings,
            samplers.Sampling(),
            frontend.text_stop(self.tokenizer.detokenize, stop),
            trim=True,
            in_place=in_place,
        )

    def _run(self, prompt, values, stop, stop_ids):
        """`prepare -> loop -> finish`, as `CausalLM.generate` runs them."""
        ragged, lengths = frontend.tokenize_prompts(
            self.tokenizer, self.template, prompt, self.context
        )
        return self._run_ids(ragged, lengths, values, stop, stop_ids)

    def _run_ids(self, ragged, lengths, values, stop, stop_ids):
        config = {
            "context": self.context,
            "start_id": self.tokenizer.eos_id,
            "eos_id": self.tokenizer.eos_id,
            "pad_id": self.tokenizer.pad_id,
            "bucket": False,
        }
        prepared = frontend.prepare(
            ragged, lengths, values, stop, stop_ids, config
        )
        args = (
            prepared["ids"],
            prepared["mask"],
            prepared["cache_length"],
            prepared["settings"],
        )
        if stop is None:
            out = self._decode(*args)
        else:  # stop strings detokenize in the loop: never XLA
            out = self._decode_text(*args, prepared["stop"])
        result = frontend.finish(
            self.tokenizer.detokenize, out, prepared["stop"]
        )
        return result, prepared["prompt_index"]

    def generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed):
        """`serving_default`: the contract's inputs and outputs, unchanged."""
        batch = tf.shape(prompt)[0]
        values = self._default_values(
            batch, max_new_tokens, temperature, top_k, top_p, seed
        )
        stop_ids = tf.fill([batch, 0], -1)
        result, _ = self._run(prompt, values, None, stop_ids)
        return result

    def _default_values(
        self, batch, max_new_tokens, temperature, top_k, top_p, seed
    ):
        """`serving_default`'s controls, checked, with every other setting
        at its default."""
        given = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "seed": seed,
        }
        checks = settings_lib.graph_checks(given, None, None, batch)
        checks.append(
            _check(
                tf.reduce_all(max_new_tokens >= 0),
                "max_new_tokens must be >= 0",
            )
        )
        with tf.control_dependencies(checks):
            given = {k: tf.identity(v) for k, v in given.items()}
        return settings_lib.fill_defaults(given, batch)

    def generate_full(
        self,
        prompt,
        max_new_tokens,
        max_length,
        min_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        repetition_penalty,
        no_repeat_ngram_size,
        num_return_sequences,
        stop,
        stop_ids,
    ):
        """`generate`: every control, each a required batched input."""
        given = dict(locals())
        batch = tf.shape(prompt)[0]
        inputs = {k: given[k] for k in settings_lib.BY_NAME}
        checks = settings_lib.graph_checks(inputs, stop, stop_ids, batch)
        with tf.control_dependencies(checks):
            inputs = {k: tf.identity(v) for k, v in inputs.items()}
            stop, stop_ids = tf.identity(stop), tf.identity(stop_ids)
        result, index = self._run(prompt, inputs, stop, stop_ids)
        return {**result, "prompt_index": index}

    def score_text(self, text):
        """Log-likelihood of each text after an end-of-text start token."""
        ragged = self._tokenize_clipped(text, self.context - 1, False)
        start = tf.fill([ragged.nrows(), 1], self.tokenizer.eos_id)
        full = tf.concat([tf.cast(start, ragged.dtype), ragged], axis=1)
        # Padding is masked out; 0 is a valid index whatever `pad_id` is
        # (SentencePiece models made elsewhere may have `pad_id == -1`).
        ids = full.to_tensor(default_value=0)
        mask = tf.sequence_mask(full.row_lengths(), tf.shape(ids)[1], tf.int32)
        # Through the attributes that `tflm.export.layout` swaps (not the
        # functional graph, which holds the original layers): the export
        # then reads one copy of each weight.
        backbone = self.model.backbone
        cache = backbone.init_cache(tf.shape(ids)[0], tf.shape(ids)[1])
        positions = backbone_lib.position_ids_from_mask(mask)
        hidden, _ = backbone.call_with_cache(ids, cache, 0, mask, positions)
        logits = self.model.logits_from_hidden(hidden)
        log_probs = tf.nn.log_softmax(logits[:, :-1], axis=-1)
        picked = tf.gather(log_probs, ids[:, 1:], batch_dims=2)
        weights = tf.cast(mask[:, 1:], tf.float32)
        return {
            "log_likelihood": tf.reduce_sum(picked * weights, axis=1),
            "num_tokens": tf.cast(tf.reduce_sum(mask[:, 1:], axis=1), tf.int32),
        }

    def tokenize_text(self, text):
        """Each text's first `context` ids (`num_tokens` counts those)."""
        ragged = self._tokenize_clipped(text, self.context, from_end=False)
        return {
            "token_ids": ragged.to_tensor(default_value=self.tokenizer.pad_id),
            "num_tokens": tf.cast(ragged.row_lengths(), tf.int32),
        }

    def detokenize_ids(self, token_ids, num_tokens):
        shape = tf.shape(token_ids)
        checks = [
            _check(
                tf.equal(tf.shape(num_tokens)[0], shape[0]),
                "num_tokens needs one value per row of token_ids (the same "
                "dimension 0)",
            ),
            _check(
                tf.reduce_all((num_tokens >= 0) & (num_tokens <= shape[1])),
                "num_tokens must be in [0, T], T the width of token_ids",
            ),
        ]
        with tf.control_dependencies(checks):
            token_ids = tf.identity(token_ids)
        ragged = tf.RaggedTensor.from_tensor(token_ids, lengths=num_tokens)
        return {"text": self.tokenizer.detokenize(ragged)}

    def _tokenize_clipped(self, text, keep, from_end: bool):
        """Each text's ids, cut to its last (or first) `keep` ids.

        The byte tokenizer's text is cut first (exact: one id per byte), so
        its work is bounded by `keep` bytes a row; other tokenizers see the
        whole text and only their ids are cut (see `frontend.tokenize`).
        """
        if getattr(self.tokenizer, "one_id_per_byte", False):
            text = clipping.clip_bytes(text, keep, from_end)
        return clipping.clip_rows(self.tokenizer.tokenize(text), keep, from_end)

    def _signature_functions(self) -> dict:
        s, i, f = tf.string, tf.int32, tf.float32
        spec = tf.TensorSpec
        dtypes = dict(zip(GENERATE_INPUTS, (s, i, f, i, f, i), strict=True))
        generate = graph.function(
            self.generate,
            input_signature=[spec([None], dtypes[n], n) for n in dtypes],
        )
        score = graph.function(
            self.score_text, input_signature=[spec([None], s, "text")]
        )
        tokenize = graph.function(
            self.tokenize_text, input_signature=[spec([None], s, "text")]
        )
        full_specs = [spec([None], s, "prompt")]
        full_specs += [spec([None], x.dtype, x.name) for x in settings_lib.SPEC]
        full_specs += [
            spec([None, None], s, "stop"),
            spec([None, None], i, "stop_ids"),
        ]
        generate_full = graph.function(
            self.generate_full, input_signature=full_specs
        )
        beam_search = beam_signature.function(self)
        detokenize = graph.function(
            self.detokenize_ids,
            input_signature=[
                spec([None, None], i, "token_ids"),
                spec([None], i, "num_tokens"),
            ],
        )
        functions = {
            "serving_default": generate,
            "generate": generate_full,
            "beam_search": beam_search,
            "score": score,
            "tokenize": tokenize,
            "detokenize": detokenize,
        }
        if self.template is not None:
            functions["chat"] = chat_signature.function(self)
        return functions

    def signatures(self) -> dict:
        """Concrete functions keyed by signature name."""
        return {
            name: function.get_concrete_function()
            for name, function in self._functions.items()
        }


def _variables_of(concrete_functions) -> list:
    seen, variables = set(), []
    for function in concrete_functions:
        for variable in function.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    return variables


def _dict_endpoint(function):
    """`function(**inputs)` as a tf.function of one dict argument."""
    concrete = function.get_concrete_function()
    specs = {t.name: t for t in concrete.structured_input_signature[0]}
    return graph.function(
        lambda inputs: function(**inputs), input_signature=[specs]
    )
