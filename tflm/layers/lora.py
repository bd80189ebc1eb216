"""`LoRADense`: a frozen `Dense` plus trainable low-rank adapters."""

from __future__ import annotations

import os

import keras
import numpy as np

ADAPTERS_ASSET = "lora_adapters.npz"


def check_blocks(blocks, units: int) -> list[list]:
    """`blocks` as `[[name, start, width], ...]`, validated against `units`.

    Each block names an adapter and the output columns `[start, start +
    width)` it writes; blocks may not overlap.
    """
    checked = []
    end = 0
    for block in sorted(blocks, key=lambda b: b[1]):
        name, start, width = block
        if not isinstance(name, str) or width <= 0 or start < end:
            raise ValueError(
                "blocks must be [name, start, width] lists of disjoint, "
                f"non-empty column ranges. Received: blocks={blocks!r}."
            )
        end = start + width
        checked.append([name, int(start), int(width)])
    if not checked or end > units:
        raise ValueError(
            f"blocks must lie inside the {units} output columns. "
            f"Received: blocks={blocks!r}."
        )
    return checked


@keras.saving.register_keras_serializable(package="tflm")
class LoRADense(keras.layers.Dense):
    """A `Dense` whose kernel is frozen and adapted by low-rank updates.

    `y = x @ W + b + (alpha / rank) * sum_i pad_i(x @ A_i @ B_i)`, where
    adapter `i` writes only its block of output columns (so one fused
    query/key/value projection can adapt query and value separately).
    `A_i (in, rank)` starts he-uniform and `B_i (rank, width_i)` at zero, so
    a fresh layer computes exactly what the `Dense` did. The kernel and bias
    are not trainable; only the adapters are.

    The adapter path is two thin matmuls on the activations, never a merged
    `(in, units)` kernel, so the frozen kernel gets no weight gradient.
    `save_own_variables` writes the kernel and bias only, under the keys a
    plain `Dense` uses: weight files (`save_weights`) of the base are
    unchanged by adapters, which are saved apart (a model directory's
    `adapters.npz`, see `tflm.models.lora`). A `.keras` file of the layer
    keeps them as an asset (`save_assets`).

    Args:
        units: int. Output columns.
        rank: int. The adapters' rank `r`.
        blocks: list of `[name, start, width]`: one adapter per block of
            output columns. Defaults to one `"lora"` adapter on all columns.
        alpha: float. Scale numerator; the update is scaled by
            `alpha / rank`. Defaults to `rank`.
        **kwargs: Passed to `keras.layers.Dense` (`use_bias`,
            `kernel_initializer`, `name`, `dtype`); no activation.

    Call arguments:
        inputs: float `(..., in)`.

    Returns:
        `(..., units)`.

    Example:
    >>> import numpy as np
    >>> layer = LoRADense(6, rank=2, blocks=[["query", 0, 2], ["value", 4, 2]])
    >>> tuple(layer(np.ones((3, 4), "float32")).shape)
    (3, 6)
    >>> [v.name for v in layer.trainable_variables]
    ['query_lora_a', 'query_lora_b', 'value_lora_a', 'value_lora_b']
    """

    def __init__(
        self,
        units: int,
        rank: int,
        blocks: list | None = None,
        alpha: float | None = None,
        **kwargs,
    ):
        if kwargs.get("activation") not in (None, "linear"):
            raise ValueError(
                "LoRADense takes no activation. Received: "
                f"activation={kwargs['activation']!r}."
            )
        super().__init__(units, **kwargs)
        if not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"rank must be a positive int. Received: {rank=}.")
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.blocks = check_blocks(blocks or [["lora", 0, units]], units)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def build(self, input_shape):
        super().build(input_shape)
        in_dim = input_shape[-1]
        self._kernel.trainable = False
        if self.bias is not None:
            self.bias.trainable = False
        self.lora_a, self.lora_b = [], []
        for name, _, width in self.blocks:
            self.lora_a.append(
                self.add_weight(
                    name=f"{name}_lora_a",
                    shape=(in_dim, self.rank),
                    initializer="he_uniform",
                )
            )
            self.lora_b.append(
                self.add_weight(
                    name=f"{name}_lora_b",
                    shape=(self.rank, width),
                    initializer="zeros",
                )
            )

    def _b_full(self):
        """All `B_i` placed in their columns: `(n * rank, units)`."""
        rows = []
        for (_, start, width), b in zip(self.blocks, self.lora_b, strict=True):
            after = self.units - start - width
            if start or after:
                b = keras.ops.pad(b, [[0, 0], [start, after]])
            rows.append(b)
        return rows[0] if len(rows) == 1 else keras.ops.concatenate(rows, 0)

    def _a_full(self):
        a = self.lora_a
        return a[0] if len(a) == 1 else keras.ops.concatenate(a, axis=1)

    def call(self, inputs, training=None):
        x = super().call(inputs)
        h = keras.ops.matmul(inputs, self._a_full()) * self.scale
        return x + keras.ops.matmul(h, self._b_full())

    def merged_kernel(self):
        """`W + (alpha / rank) * A @ B` as a float32 tensor `(in, units)`."""
        delta = keras.ops.matmul(
            keras.ops.cast(self._a_full(), "float32"),
            keras.ops.cast(self._b_full(), "float32"),
        )
        return keras.ops.cast(self._kernel, "float32") + self.scale * delta

    def _check_load_own_variables(self, store):
        # The store holds the base variables only (see `save_own_variables`).
        expected = 1 + int(self.use_bias)
        if len(store.keys()) != expected:
            raise ValueError(
                f"Layer '{self.name}' expected {expected} base variables, "
                f"but the weights file lists {len(store.keys())}."
            )

    def save_assets(self, dir_path):
        arrays = {v.name: keras.ops.convert_to_numpy(v) for v in self._lora()}
        with open(os.path.join(dir_path, ADAPTERS_ASSET), "wb") as f:
            np.savez(f, **arrays)

    def load_assets(self, dir_path):
        path = os.path.join(dir_path, ADAPTERS_ASSET)
        with np.load(path, allow_pickle=False) as data:
            for variable in self._lora():
                variable.assign(data[variable.name])

    def _lora(self):
        return [*self.lora_a, *self.lora_b]

    def get_config(self):
        config = super().get_config()
        config.update(rank=self.rank, blocks=self.blocks, alpha=self.alpha)
        return config
