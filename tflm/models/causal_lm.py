"""Causal language model: a backbone plus the tied output projection."""

from __future__ import annotations

import os

import keras

from tflm import errors
from tflm.models import backbone as backbone_lib
from tflm.models import model_dir
from tflm.models import presets

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
        # Set by `from_preset(directory)` or by the user; `generate` needs
        # it for text prompts. Not part of the Keras config.
        self.tokenizer = None
        self._generators = {}

    def logits_from_hidden(self, hidden):
        """float32 logits `(..., V)` from hidden states `(..., D)`."""
        logits = self.backbone.token_embedding(hidden, reverse=True)
        return keras.ops.cast(logits, "float32")

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
        )

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

    def generate(self, prompts, max_new_tokens: int | None = None, **kwargs):
        """Continues prompts; see `tflm.models.generation_api.generate`."""
        from tflm.models import generation_api

        return generation_api.generate(self, prompts, max_new_tokens, **kwargs)

    def stream(self, prompt, max_new_tokens: int | None = None, **kwargs):
        """Yields text pieces as they are produced; see `generate`."""
        from tflm.models import generation_api

        return generation_api.stream(self, prompt, max_new_tokens, **kwargs)

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
