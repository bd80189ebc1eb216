"""Causal language model: a backbone plus the tied output projection."""

from __future__ import annotations

import keras

from tflm.models import backbone as backbone_lib

# Weight decay applies to matmul kernels only (as in GPT-2/nanoGPT): never to
# biases, normalization scales/offsets or input embeddings. Patterns match a
# variable's short name; an untied output head (`reverse_embeddings`) is a
# matmul kernel and is decayed.
NO_DECAY_NAMES = ("^bias$", "^gamma$", "^beta$", "^scale$", "^embeddings$")


def default_optimizer(
    learning_rate=3e-4, weight_decay: float = 0.1, clipnorm: float = 1.0
) -> keras.optimizers.AdamW:
    """AdamW(0.9, 0.95) with global-norm clipping, no decay on biases/norms."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.95,
        epsilon=1e-8,
        global_clipnorm=clipnorm,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer


@keras.saving.register_keras_serializable(package="tflm")
class CausalLM(keras.Model):
    """Next-token language model: `{token_ids, padding_mask}` → float32 logits.

    Args:
        backbone: a `tflm.models.Backbone`.
        **kwargs: Passed to `keras.Model` (`name`).

    Call arguments:
        inputs: dict with `token_ids` int `(B, T)` and `padding_mask` `(B, T)`.

    Returns:
        float32 logits `(B, T, V)`, whatever the dtype policy.

    Example:
    >>> import numpy as np
    >>> lm = CausalLM.from_preset("tiny")
    >>> x = {"token_ids": np.ones((1, 4), "int32"),
    ...      "padding_mask": np.ones((1, 4), "int32")}
    >>> lm(x).shape
    TensorShape([1, 4, 32])
    """

    def __init__(self, backbone: backbone_lib.Backbone, **kwargs):
        inputs = backbone.input
        hidden = backbone(inputs)
        logits = backbone.token_embedding(hidden, reverse=True)
        logits = keras.ops.cast(logits, "float32")
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.backbone = backbone
        # Set by `tflm.modeldir.load` or by the user; `generate` needs it for
        # text prompts. Not part of the Keras config.
        self.tokenizer = None
        self._generators = {}

    def logits_from_hidden(self, hidden):
        """float32 logits `(..., V)` from hidden states `(..., D)`."""
        logits = self.backbone.token_embedding(hidden, reverse=True)
        return keras.ops.cast(logits, "float32")

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> CausalLM:
        """A randomly initialized model from a preset, e.g. `"tiny"`."""
        return cls(backbone_lib.Backbone.from_preset(preset, **overrides))

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        learning_rate=3e-4,
        weight_decay: float = 0.1,
        **kwargs,
    ):
        """`keras.Model.compile` with language-model defaults.

        `"auto"` means: AdamW (see `default_optimizer`), sparse categorical
        cross-entropy from logits (padding excluded through `sample_weight`),
        and token accuracy.
        """
        if optimizer == "auto":
            optimizer = default_optimizer(learning_rate, weight_decay)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if weighted_metrics == "auto":
            weighted_metrics = [
                keras.metrics.SparseCategoricalAccuracy("accuracy")
            ]
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )

    def compile_from_config(self, config):
        """Recompiles from a saved `.keras` file (our `compile` is custom)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if isinstance(self.optimizer, keras.optimizers.AdamW):
            # AdamW's config does not keep its exclusion list.
            self.optimizer.exclude_from_weight_decay(
                var_names=list(NO_DECAY_NAMES)
            )
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def call_with_cache(
        self, token_ids, cache, cache_index, padding_mask, position_ids
    ):
        """One cached forward step; see `Backbone.call_with_cache`.

        Returns:
            `(logits (B, T, V) float32, hidden (B, T, D), cache)`.
        """
        hidden, cache = self.backbone.call_with_cache(
            token_ids, cache, cache_index, padding_mask, position_ids
        )
        return self.logits_from_hidden(hidden), hidden, cache

    def generator(self, jit_compile: bool = True, tokenizer=None):
        """This model's compiled `tflm.generation.api.Generator`, cached
        per `(jit_compile, tokenizer)` (default tokenizer: `self.tokenizer`).
        """
        from tflm.generation import api

        tokenizer = tokenizer or self.tokenizer
        key = (bool(jit_compile), tokenizer)
        if key not in self._generators:
            self._generators[key] = api.Generator(
                self.backbone.call_with_cache,
                self.logits_from_hidden,
                self.backbone.init_cache,
                context=self.backbone.max_sequence_length,
                vocabulary_size=self.backbone.vocabulary_size,
                tokenizer=tokenizer,
                jit_compile=jit_compile,
            )
        return self._generators[key]

    def generate(
        self,
        prompts,
        max_new_tokens: int | None = None,
        *,
        tokenizer=None,
        jit_compile: bool = True,
        **kwargs,
    ):
        """Continues prompts, with Hugging Face's names for the controls.

        Args:
            prompts: a string, a list of strings, a list of ids, or a list
                of id lists (of different lengths).
            max_new_tokens: int, or one per prompt. Default: 64, or
                `context - 1` if smaller; capped at `context - 1`.
            tokenizer: overrides `self.tokenizer`.
            jit_compile: compile the loop with XLA (not with stop strings).
            **kwargs: `max_length` (prompt + new tokens; not with
                `max_new_tokens`), `min_new_tokens`, `temperature` (0:
                greedy), `top_k` (0: off), `top_p` (1: off), `seed`,
                `repetition_penalty` (1: off), `no_repeat_ngram_size` (0:
                off), `num_return_sequences` (copy `j` uses `seed + j`),
                each a scalar or one per prompt; `stop`: stop strings
                (matched on text, not returned) and stop ids;
                `return_details`: also return `token_ids`, `num_tokens`,
                `stop_reason` and `prompt_index` per sequence. See
                `tflm.generation.settings` for the rules.

        Returns:
            The continuations (without the prompt): strings for text
            prompts, id lists for id prompts; one item for a single prompt
            and one sequence, else a flat list, prompt by prompt.
        """
        from tflm.generation import interface

        generator = self.generator(jit_compile, tokenizer)
        return interface.generate(generator, prompts, max_new_tokens, **kwargs)

    def stream(
        self,
        prompt,
        max_new_tokens: int | None = None,
        *,
        tokenizer=None,
        **kwargs,
    ):
        """Yields text pieces of one prompt's continuation as they are made.

        Takes `generate`'s settings and `chunk` (tokens per piece); runs the
        plain graph, and the pieces join to `generate`'s text.
        """
        from tflm.generation import interface

        generator = self.generator(False, tokenizer)
        return interface.stream(generator, prompt, max_new_tokens, **kwargs)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        return cls(**config)
