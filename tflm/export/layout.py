"""The export's weight layout: projection kernels stored transposed.

A Keras `Dense` kernel is `(in, out)`. In the plain graph that TF Serving
runs (oneDNN matmuls, no XLA), `x @ W` with `W` stored `(out, in)` and
`transpose_b=True` measured faster for the narrow inputs of a decode step:
an MLP's two matmuls chained as in a block, float32, 0.464 -> 0.383 ms at
batch 1 and 1.01 -> 0.77 ms at batch 8 on this project's CPU (bfloat16:
0.80 -> 0.56 and 0.77 -> 0.68). The tied output head already multiplies by
the embedding table transposed.

`transposed_projections(model)` swaps every float32 or bfloat16 projection
of the decoder blocks for a `TransposedDense` with that layout for the
duration of an export, then puts the original layers back: the exported
graph reads only the transposed kernels (so the SavedModel holds one copy),
and the model in memory is as it was. int8 projections keep Keras' own
quantized matmul.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from tflm.models import weights as weights_lib


class TransposedDense(tf.Module):
    """`x @ kernel_t^T + bias`, `kernel_t` being a `Dense` kernel transposed
    (`(out, in)`): what that `Dense` computes, in the same dtypes (inputs
    cast to the kernel's dtype; a float32 bias makes the output float32)."""

    def __init__(self, dense: keras.layers.Dense):
        super().__init__(name=dense.name)
        # A Keras variable, so that `tflm.graph.reads_hoisted` reads it
        # once before the decode loop, as it does the model's own weights.
        self.kernel_t = keras.Variable(
            tf.transpose(dense.kernel),
            trainable=False,
            autocast=False,
            name="kernel_t",
        )
        self.bias = dense.bias

    def __call__(self, inputs):
        x = tf.cast(inputs, self.kernel_t.dtype)
        x = tf.matmul(x, self.kernel_t, transpose_b=True)
        if self.bias is None:
            return x
        bias = tf.convert_to_tensor(self.bias)
        if x.dtype != bias.dtype:
            x = tf.cast(x, tf.float32)
            bias = tf.cast(bias, tf.float32)
        return tf.nn.bias_add(x, bias)


def _transposable(layer) -> bool:
    # A mixed policy (float32 kernel, bf16/f16 compute) would need Keras'
    # autocast; such layers keep their `Dense`.
    kernel = keras.backend.standardize_dtype(layer.kernel.dtype)
    return (
        type(layer) is keras.layers.Dense
        and layer.activation in (None, keras.activations.linear)
        and not layer.quantization_mode
        and kernel in ("float32", "bfloat16")
        and layer.compute_dtype == kernel
    )


@contextlib.contextmanager
def transposed_projections(model):
    """Within: `model`'s float32 and bfloat16 projections multiply by
    transposed kernels (see the module docstring). Yields how many layers
    were swapped."""
    swapped = []
    try:
        for parent, attr, layer in weights_lib.projection_slots(model):
            if _transposable(layer):
                object.__setattr__(parent, attr, TransposedDense(layer))
                swapped.append((parent, attr, layer))
        if swapped:
            model._generators = {}  # traced with the other layers
        yield len(swapped)
    finally:
        for parent, attr, layer in swapped:
            object.__setattr__(parent, attr, layer)
        if swapped:
            model._generators = {}
