"""The serving contract's signatures, as a `tf.Module`.

Every signature is the generation pipeline (`tflm.generation.pipeline`)
with its own request form, and its inputs' `tf.TensorSpec`s come from
`tflm.generation.spec.SIGNATURES`: what `CausalLM.generate` runs, in the
same graph code. The decode plan reads the export's `StoredWeights` (the
plain graph's layouts, stored once). Everything is core TensorFlow (plus
the tokenizer's TF Text ops), so the SavedModel runs under stock TF
Serving, which disables XLA and loads no Python. Inputs are validated in
the graph: bad values fail the request with an `InvalidArgument` error that
names the input.
"""

from __future__ import annotations

import inspect

import tensorflow as tf

from tflm import graph
from tflm.generation import beam as beam_lib
from tflm.generation import pipeline as pipeline_lib
from tflm.generation import spec
from tflm.generation import templating
from tflm.models import decode_plan
from tflm.tokenizers import template_render

# The signatures that generate text.
GENERATING = ("serving_default", "generate", "beam_search", "chat")


def _check(condition, message):
    return tf.debugging.Assert(condition, [message])


def _first(x, batch):
    """`x[0]`, or 1 for an empty batch."""
    return tf.cond(batch > 0, lambda: x[0], lambda: tf.ones([], x.dtype))


class ServingModule(tf.Module):
    """Tracks a `CausalLM` and its tokenizer; exposes the signatures.

    Args:
        model: a `tflm.models.CausalLM`.
        tokenizer: a `tflm.tokenizers.Tokenizer`.
        jit_compile: run the sampling loop under XLA (TF Serving then needs
            `--xla_cpu_compilation_enabled=true`).
    """

    def __init__(self, model, tokenizer, jit_compile: bool = False):
        super().__init__(name="tflm")
        self._keep_untracked(model, decode_plan.StoredWeights(model))
        self.tokenizer = tokenizer
        self.pipeline = pipeline_lib.Pipeline(
            model.decoding,
            tokenizer,
            getattr(model, "template", None),
            context=model.backbone.max_sequence_length,
            vocabulary_size=model.backbone.vocabulary_size,
            eos_ids=getattr(model, "eos_ids", ()),
        )
        self.template = self.pipeline.template
        self.layout = decode_plan.Layout("graph", False, self.stored)
        self._decode_xla = None
        if jit_compile:
            xla = decode_plan.Layout("xla", False, self.stored)
            self._decode_xla = graph.function(
                lambda p: self.pipeline.decode(p, xla), jit_compile=True
            )
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
    def _keep_untracked(self, model, stored):
        # The SavedModel must not track the Keras model: a Keras variable
        # exports a second copy of itself, and under TF1 loading (TF Serving)
        # the checkpoint restores that copy while the functions read the
        # original, which fails with "Could not find variable". The
        # variables the functions use are tracked instead.
        self.model = model
        self.stored = stored

    def _checked(self, name, inputs):
        """The request of a generating signature, its inputs checked."""
        first = "prompt" if "prompt" in inputs else "role"
        batch = tf.shape(inputs[first])[0]
        settings = {k: inputs[k] for k in spec.ALL_SETTINGS if k in inputs}
        checks = spec.graph_checks(
            settings,
            inputs.get("stop"),
            inputs.get("stop_ids"),
            batch,
            self.pipeline.context,
            first,
        )
        if name == "chat":
            checks += _chat_checks(
                self.template, inputs["role"], inputs["content"]
            )
        with tf.control_dependencies(checks):
            inputs = {k: tf.identity(v) for k, v in inputs.items()}
        if name == "chat":
            prompt = pipeline_lib.Prompt(
                role=inputs["role"], content=inputs["content"]
            )
        else:
            prompt = pipeline_lib.Prompt(text=inputs["prompt"])
        given = {k: v for k, v in inputs.items() if k in spec.BY_NAME}
        beams = None
        if name == "beam_search":
            # Beam search returns its own several: each prompt is decoded
            # once (as `CausalLM.generate` does with `num_beams > 1`).
            k = given.pop("num_return_sequences")
            beams = beam_lib.Beams(
                num_beams=_first(inputs["num_beams"], batch),
                num_return_sequences=_first(k, batch),
                length_penalty=inputs["length_penalty"],
                early_stopping=inputs["early_stopping"],
            )
        return pipeline_lib.Request(
            prompt=prompt,
            settings=spec.Settings(**spec.fill_defaults(given, batch)),
            stop=inputs.get("stop"),
            stop_ids=inputs.get("stop_ids", tf.fill([batch, 0], -1)),
            beams=beams,
        )

    def generating(self, name: str, inputs: dict) -> dict:
        """A generating signature: the pipeline on its request form."""
        request = self._checked(name, inputs)
        response = self.pipeline.run(request, self.layout, self._decode_xla)
        return {k: getattr(response, k) for k in spec.OUTPUTS[name]}

    def _sized(self, text):
        """`text` once its rows pass the size caps (`spec.limit_checks`):
        `score` and `tokenize` hold rows x context, as decoding does."""
        checks = [
            _check(ok, message)
            for ok, _, message in spec.limit_checks(
                {}, tf.shape(text)[0], self.pipeline.context, "text"
            )
        ]
        with tf.control_dependencies(checks):
            return tf.identity(text)

    def score(self, text):
        """Log-likelihood of each text after an end-of-text start token."""
        text = self._sized(text)
        likelihood, count = self.pipeline.score(text, self.layout)
        return {"log_likelihood": likelihood, "num_tokens": count}

    def tokenize(self, text):
        """Each text's first `context` ids (`num_tokens` counts those)."""
        text = self._sized(text)
        context = self.pipeline.context
        ragged = self.pipeline.tokenize_clipped(text, context, False)
        ragged = pipeline_lib.dense_checked(ragged, 0, "text rows")
        return {
            "token_ids": ragged.to_tensor(default_value=self.tokenizer.pad_id),
            "num_tokens": tf.cast(ragged.row_lengths(), tf.int32),
        }

    def detokenize(self, token_ids, num_tokens):
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

    def _signature_functions(self) -> dict:
        functions = {}
        for name in spec.signature_names(self.template is not None):
            specs = spec.input_specs(name)
            if name in GENERATING:
                body = _by_name(specs, lambda i, n=name: self.generating(n, i))
            else:
                method = getattr(self, name.replace("serving_default", ""))
                body = _by_name(specs, lambda i, m=method: m(**i))
            functions[name] = graph.function(body, input_signature=specs)
        return functions

    def signatures(self) -> dict:
        """Concrete functions keyed by signature name."""
        return {
            name: function.get_concrete_function()
            for name, function in self._functions.items()
        }


def _chat_checks(template, role, content) -> list:
    checks = [
        _check(
            tf.reduce_all(tf.equal(tf.shape(role), tf.shape(content))),
            "role and content must have the same shape [B, M]",
        ),
        template_render.role_check(template, role),
    ]
    with tf.control_dependencies(checks):
        checks.append(templating.last_check(role))
        checks.append(templating.turns_check(role))
    return checks


def _by_name(specs, body):
    """`body(inputs dict)` as a function of positional inputs, named by
    `specs` (what a signature with that input signature calls)."""
    names = [s.name for s in specs]

    def function(*args):
        return body(dict(zip(names, args, strict=True)))

    # Named parameters, so that the signature's inputs keep their names.
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    function.__signature__ = inspect.Signature(
        [inspect.Parameter(name, kind) for name in names]
    )
    return function


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
