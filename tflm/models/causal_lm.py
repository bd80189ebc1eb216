"""Causal language model: a backbone plus the tied output projection."""

from __future__ import annotations

import json
import os

import keras

from tflm import errors
from tflm.generation import loop as loop_lib
from tflm.layers import kv_cache
from tflm.models import backbone as backbone_lib
from tflm.models import decode_plan
from tflm.models import lora
from tflm.models import model_dir
from tflm.models import optimizer as optimizer_lib
from tflm.models import presets
from tflm.models import train_step

# Traced generators kept per model (the newest ones).
_MAX_GENERATORS = 4


def default_optimizer(
    learning_rate=3e-4,
    weight_decay: float = 0.1,
    clipnorm: float | None = 1.0,
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    schedule: str = "cosine",
    min_learning_rate: float | None = None,
    precision: str = "float32",
) -> keras.optimizers.Optimizer:
    """tflm's AdamW (the one `tflm train` uses), with its schedule.

    AdamW(0.9, 0.95), global-norm clipping of the gradient summed over
    replicas, no decay on biases, norms and embeddings, linear warm-up and
    then `schedule` to `min_learning_rate` (default: a tenth of the peak)
    at `total_steps`; a constant rate after warm-up without `total_steps`.
    """
    if total_steps is None:
        schedule, total_steps = "constant", warmup_steps
    floor = (
        learning_rate / 10 if min_learning_rate is None else min_learning_rate
    )
    return optimizer_lib.make_optimizer(
        learning_rate=learning_rate,
        min_learning_rate=floor,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        schedule=schedule,
        weight_decay=weight_decay,
        clip_norm=clipnorm,
        precision=precision,
        sum_gradients=False,
    )


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
        # Set by `from_preset(directory)` or by the user; `generate` needs
        # it for text prompts. Not part of the Keras config.
        self.tokenizer = None
        # The prompt template it was fine-tuned with (`config.json
        # ["template"]`, see `tflm.tokenizers.templates`), or `None`: generation
        # then renders text prompts and conversations into it.
        self.template = None
        # More ids that end a reply (`config.json["eos_ids"]`, from an
        # imported checkpoint's `generation_config.json`).
        self.eos_ids: tuple[int, ...] = ()
        self._generators = {}

    def logits_from_hidden(self, hidden, plan=None):
        """float32 logits `(..., V)` from hidden states `(..., D)` (with a
        decode plan's head layout, if given)."""
        embedding = self.backbone.token_embedding
        if plan is None:
            logits = embedding(hidden, reverse=True)
        else:
            logits = plan.head(embedding, hidden)
        return keras.ops.cast(logits, "float32")

    def decoding(self, layout=None) -> loop_lib.Decoding:
        """What a decode loop calls, with `layout`'s weights
        (`tflm.models.decode_plan`). Call it inside the traced function
        that runs the loop, before the loop: the plan's weight reads are
        made there, once.

        Args:
            layout: a `decode_plan.Layout`; default: the plain graph's.
        """
        layout = layout or decode_plan.Layout()
        plan = decode_plan.DecodePlan(layout)
        in_loop = plan.writing_in_place() if layout.in_place else plan
        backbone = self.backbone

        def forward_with(p):
            def forward(ids, cache, index, mask, positions):
                with p.scope():
                    return backbone.call_with_cache(
                        ids, cache, index, mask, positions, plan=p
                    )

            return forward

        def to_logits(hidden):
            with plan.scope():
                return self.logits_from_hidden(hidden, plan)

        def own(cache):
            return kv_cache.owned_copy(cache) if layout.in_place else cache

        return loop_lib.Decoding(
            forward=forward_with(plan),
            step=forward_with(in_loop),
            to_logits=to_logits,
            init_cache=backbone.init_cache,
            own=own,
        )

    @classmethod
    def from_preset(cls, preset: str | os.PathLike, **overrides) -> CausalLM:
        """A model from a model directory, or a new one from a preset name.

        Args:
            preset: a model directory (written by `save_to_preset`, `tflm
                train` or `tflm import`), loaded with its weights and its
                tokenizer attached, so that `generate` takes text; or the
                name of an architecture in `tflm.models.PRESETS`, such as
                `"tiny"`, built with random weights and no tokenizer.
            **overrides: `Backbone` arguments to change, such as `dropout`
                or `dtype` (for a directory, the sizes must still fit the
                saved weights).

        Raises:
            InputError: an unknown name (the message lists the presets), or
                a model directory with a missing or corrupt file.
        """
        if os.path.isdir(preset):
            return model_dir.load_model(cls, preset, **overrides)
        name = os.fspath(preset)
        if name not in presets.PRESETS:
            where = (
                "No such model directory, and no preset of that name"
                if os.sep in name or os.path.lexists(name)
                else "Unknown preset"
            )
            raise errors.InputError(
                f"{where}. Received: preset={name!r}. Name a model "
                "directory or one of the presets: "
                f"{', '.join(sorted(presets.PRESETS))}."
            )
        return cls(backbone_lib.Backbone.from_preset(name, **overrides))

    def save_to_preset(
        self,
        directory: str | os.PathLike,
        *,
        overwrite: bool = False,
        merge_lora: bool = False,
    ) -> str:
        """Writes a model directory that `from_preset` loads.

        Args:
            directory: see `tflm.models.model_dir.save`; an existing model
                there is replaced only with `overwrite=True`.
            overwrite: replace an existing model directory.
            merge_lora: write LoRA adapters (`tflm.models.lora`) merged into
                the weights, not apart in `adapters.npz`.

        Returns:
            The real path of the directory.

        Raises:
            InputError: no tokenizer is attached, or see `model_dir.save`.
        """
        if self.tokenizer is None:
            raise errors.InputError(
                "save_to_preset needs the model's tokenizer: set "
                "`model.tokenizer` (a `tflm.tokenizers.Tokenizer`) first."
            )
        return model_dir.save(
            self,
            self.tokenizer,
            directory,
            overwrite=overwrite,
            merge_lora=merge_lora,
            metadata={"template": self.template} if self.template else None,
        )

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        learning_rate=3e-4,
        weight_decay: float = 0.1,
        clip_norm: float | None = 1.0,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        schedule: str = "cosine",
        accumulation_steps: int = 1,
        **kwargs,
    ):
        """`keras.Model.compile` with tflm's training recipe by default.

        With `loss="auto"`, `fit` runs tflm's one train step (see
        `tflm.models.train_step`), the same as `tflm train`: cross-entropy
        from logits weighted by `sample_weight`, `accumulation_steps`
        micro-batches per update, gradients summed over replicas and then
        clipped to `clip_norm`. `optimizer="auto"` is tflm's AdamW with
        warm-up and decay (see `default_optimizer`); `weighted_metrics`
        defaults to token accuracy.
        """
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise errors.InputError(
                "accumulation_steps must be a positive integer. Received: "
                f"accumulation_steps={accumulation_steps!r}."
            )
        self.accumulation_steps = accumulation_steps
        self._tflm_step = loss == "auto"
        if optimizer == "auto":
            optimizer = default_optimizer(
                learning_rate,
                weight_decay,
                clip_norm,
                warmup_steps=warmup_steps,
                total_steps=total_steps,
                schedule=schedule,
            )
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

    def train_step(self, data):
        if not getattr(self, "_tflm_step", False):
            return super().train_step(data)
        loss, _ = train_step.apply(
            self,
            self.optimizer,
            data,
            self.accumulation_steps,
            self._update_compiled_metrics,
        )
        # Weighted by this batch's tokens (see `test_step`).
        _, _, weight = train_step.unpack(data)
        self._loss_tracker.update_state(
            loss, sample_weight=keras.ops.sum(weight)
        )
        return train_step.for_keras_reduction(self.get_metrics_result())

    def test_step(self, data):
        if not getattr(self, "_tflm_step", False):
            return super().test_step(data)
        x, y, weight = train_step.unpack(data)
        loss_sum = train_step.token_loss_sum(
            self, x, y, weight, False, self._update_compiled_metrics
        )
        # The token-weighted mean over everything evaluated, as `tflm eval`
        # gives. Keras' own step averages per batch weighted by its rows, a
        # constant where the batch shape is static, and the call that finds
        # the data used up still adds it: one batch too many is counted.
        # The token count comes from the batch, so it is never added alone.
        tokens = keras.ops.sum(weight)
        self._loss_tracker.update_state(
            keras.ops.divide_no_nan(loss_sum, tokens), sample_weight=tokens
        )
        return train_step.for_keras_reduction(self.get_metrics_result())

    def _update_compiled_metrics(self, y, logits, weight):
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y, logits, weight)

    def compile_from_config(self, config):
        """Recompiles from a saved `.keras` file (our `compile` is custom)."""
        config = keras.saving.deserialize_keras_object(config)
        if isinstance(
            config.get("loss"), keras.losses.SparseCategoricalCrossentropy
        ):
            config["loss"] = "auto"  # tflm's train step, as compiled.
        self.compile(**config)
        if isinstance(self.optimizer, keras.optimizers.AdamW):
            # AdamW's config does not keep its exclusion list.
            self.optimizer.exclude_from_weight_decay(
                var_names=list(optimizer_lib.NO_DECAY_NAMES)
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
        """This model's traced `tflm.generation.generator.Generator` for
        `(jit_compile, tokenizer)` (default tokenizer: `self.tokenizer`).

        Kept per model for the newest few settings, keyed by the model's
        layers and variables too: after a weight conversion or LoRA swap
        the next call traces anew.
        """
        from tflm.generation import generator as generator_lib
        from tflm.generation import pipeline

        tokenizer = tokenizer or self.tokenizer
        template = json.dumps(self.template, sort_keys=True)
        weights = tuple(id(v) for v in self.weights)
        key = (bool(jit_compile), tokenizer, template, self.eos_ids, weights)
        if key not in self._generators:
            while len(self._generators) >= _MAX_GENERATORS:
                self._generators.pop(next(iter(self._generators)))
            self._generators[key] = generator_lib.Generator(
                pipeline.Pipeline(
                    self.decoding,
                    tokenizer,
                    self.template,
                    context=self.backbone.max_sequence_length,
                    vocabulary_size=self.backbone.vocabulary_size,
                    eos_ids=self.eos_ids,
                ),
                jit_compile=jit_compile,
                layouts=decode_plan.Layout,
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
                of id lists (of different lengths); for a model with a
                `template`, also a conversation (a list of `{"role",
                "content"}` turns) or a list of them. With a template, text
                prompts and conversations are rendered into it, and the
                output is the reply only; ids are taken as they are.
            max_new_tokens: int, or one per prompt. Default: 64, or
                `context - 1` if smaller; capped at the room the prompt
                leaves in the context (the prompt is kept whole; one that
                fills the context keeps its last `context - 1` tokens).
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
                `tflm.generation.spec` for the rules. Beam search:
                `num_beams` (> 1), `length_penalty`, `early_stopping`,
                Hugging Face's semantics; it returns the best
                `num_return_sequences` beams per prompt (with
                `return_details`, their `score`), and refuses sampling,
                penalties and stops (`tflm.generation.spec`).

        Returns:
            The continuations (without the prompt): strings for text
            prompts, id lists for id prompts; one item for a single prompt
            and one sequence, else a flat list, prompt by prompt.
        """
        from tflm.generation import generator as generator_lib

        generator = self.generator(jit_compile, tokenizer)
        return generator_lib.generate(
            generator, prompts, max_new_tokens, **kwargs
        )

    def stream(
        self,
        prompt,
        max_new_tokens: int | None = None,
        *,
        tokenizer=None,
        **kwargs,
    ):
        """Yields text pieces of one prompt's continuation as they are made.

        `prompt` is one string, or one conversation for a model with a
        `template` (see `generate`).

        Takes `generate`'s settings and `chunk` (tokens per piece); runs the
        plain graph, and the pieces join to `generate`'s text.
        """
        from tflm.generation import generator as generator_lib

        generator = self.generator(False, tokenizer)
        return generator_lib.stream(generator, prompt, max_new_tokens, **kwargs)

    def get_config(self):
        config = {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "name": self.name,
        }
        # LoRA layers are swapped in after construction: without this, a
        # `.keras` file would load as the base model, adapters dropped.
        if (adapters := lora.lora_config(self)) is not None:
            config["lora"] = adapters
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        adapters = config.pop("lora", None)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        model = cls(**config)
        if adapters is not None:
            lora.enable_lora(model, **adapters)
        return model
