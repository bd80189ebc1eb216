"""Learned position embedding."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tflm")
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embedding, looked up by position ids.

    Args:
        max_sequence_length: int. Number of positions.
        hidden_dim: int. Embedding width `D`.
        initializer: Keras initializer, serialized or name. Defaults to a
            normal with stddev 0.01.
        **kwargs: Passed to `keras.layers.Layer`.

    Call arguments:
        position_ids: int `(B, T)`.

    Returns:
        float `(B, T, D)`.

    Example:
    >>> import numpy as np
    >>> tuple(PositionEmbedding(8, 4)(np.zeros((1, 3), "int32")).shape)
    (1, 3, 4)
    """

    def __init__(
        self,
        max_sequence_length: int,
        hidden_dim: int,
        initializer="random_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("max_sequence_length", max_sequence_length),
            ("hidden_dim", hidden_dim),
        ):
            if int(value) <= 0:
                raise ValueError(
                    f"{name} must be positive. Received: {name}={value}."
                )
        self.max_sequence_length = int(max_sequence_length)
        self.hidden_dim = int(hidden_dim)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_sequence_length, self.hidden_dim),
            initializer=self.initializer,
        )

    def call(self, position_ids):
        length = position_ids.shape[-1]
        if length is not None and length > self.max_sequence_length:
            raise ValueError(
                f"Sequence length {length} exceeds the model's context. "
                f"Received: sequence length={length}, "
                f"max_sequence_length={self.max_sequence_length}. Use shorter "
                "inputs or a model with a longer context."
            )
        # A one-hot matmul instead of a gather: its gradient is dense. A
        # gather's is `IndexedSlices`, which Keras optimizers apply with a
        # scatter per step (slow under XLA, and Adam then squares each slice
        # before duplicates are summed). It costs `2 * T * context * D`
        # FLOPs per sequence, under 1% of a training step.
        one_hot = keras.ops.one_hot(
            position_ids, self.max_sequence_length, dtype=self.compute_dtype
        )
        return keras.ops.matmul(one_hot, self.embeddings)

    def lookup(self, position_ids):
        """A plain gather of `position_ids`, for decoding (no gradient)."""
        rows = keras.ops.take(self.embeddings, position_ids, axis=0)
        return keras.ops.cast(rows, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            max_sequence_length=self.max_sequence_length,
            hidden_dim=self.hidden_dim,
            initializer=keras.initializers.serialize(self.initializer),
        )
        return config
