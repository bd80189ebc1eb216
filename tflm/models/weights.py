"""Inference weights in bfloat16 or int8: `convert_weights(model, weights)`.

Decoding at small batch is bound by reading the weights, so storing the
projection kernels in fewer bytes makes each step cheaper and the exported
SavedModel smaller. A converted model keeps its layers, names and graph; only
the kernel variables of the projections change dtype:

- `"float32"`: unchanged (the training format).
- `"bfloat16"`: every projection kernel (fused or separate query/key/value,
  attention output, `mlp_in`, `mlp_out`) and the token embedding (which the
  tied output head reuses) are stored in bfloat16, and those matmuls run in
  bfloat16 (float32 accumulation). Biases, norms, position embeddings, the KV
  cache, attention scores and softmax, and the residual stream stay float32.
- `"int8"`: weight-only int8 (Keras' int8 layers, activations not
  quantized) with one float32 scale per output channel (absmax, symmetric):
  `x @ (q * s) == (x @ q) * s`, so the scale is applied to the matmul's
  output. The int8 kernel is cast to bfloat16 for the matmul (int8 values
  are exact in bfloat16); `benchmarks/precision.py` measures this against a
  float32 matmul and Keras' W8A8 mode.

Everything is core TensorFlow (`Cast`, `MatMul`, `RealDiv`), so an export serves
under TF Serving's conditions (XLA off, C++ loader). A model directory saved
from a converted model stores the converted variables and records `weights`
in its `config.json`; `tflm.models.model_dir.load_model` converts the freshly
built model before it loads them (see `restore_weights`).

Example:
>>> from tflm.models import causal_lm
>>> lm = causal_lm.CausalLM.from_preset("tiny")
>>> lm = convert_weights(lm, "bfloat16")
>>> lm.backbone.blocks[0].mlp_in.kernel.dtype
'bfloat16'
>>> weights_of(lm)
'bfloat16'
"""

from __future__ import annotations

import logging

import keras

from tflm import errors
from tflm.models import lora

logger = logging.getLogger("tflm")

WEIGHTS = ("float32", "bfloat16", "int8")
# The dtype matmuls run in for the int8 kernels (see the module docstring).
_INT8_COMPUTE = "bfloat16"


def check_weights(weights: str) -> str:
    """Returns `weights` if it is one of `WEIGHTS`; else raises InputError."""
    if weights not in WEIGHTS:
        raise errors.InputError(
            f"weights must be one of {', '.join(WEIGHTS)}. Received: "
            f"weights={weights!r}."
        )
    return weights


def projection_slots(model) -> list[tuple]:
    """`(parent layer, attribute, Dense)` for every projection of every
    decoder block of `model`."""
    slots = []
    for block in model.backbone.blocks:
        attention = block.attention
        names = ("query", "key", "value")
        if attention.fused_qkv:
            names = ("query_key_value",)
        for parent, attrs in (
            (attention, (*names, "output_dense")),
            (block, ("mlp_in", "mlp_out")),
        ):
            slots.extend((parent, a, getattr(parent, a)) for a in attrs)
    return slots


def projections(model) -> list[keras.layers.Dense]:
    """The `Dense` projections of every decoder block of `model`."""
    return [layer for _, _, layer in projection_slots(model)]


def weights_of(model) -> str:
    """Which of `WEIGHTS` the projections of `model` are stored in."""
    kernel = model.backbone.blocks[0].mlp_in.kernel
    dtype = keras.backend.standardize_dtype(kernel.dtype)
    return "float32" if dtype not in WEIGHTS else dtype


def convert_weights(model, weights: str):
    """Converts `model`'s projection kernels to `weights`, in place.

    Args:
        model: a float32 `tflm.models.CausalLM` (trained or imported).
        weights: `"float32"` (no change), `"bfloat16"` or `"int8"`.

    Returns:
        `model`, for chaining.

    Raises:
        InputError: `weights` is not one of `WEIGHTS`, or `model` is already
            converted to another type.
    """
    check_weights(weights)
    current = weights_of(model)
    if current == weights:
        return model
    if current != "float32":
        raise errors.InputError(
            f"The model's weights are already {current}; convert a float32 "
            f"model instead. Received: weights={weights!r}."
        )
    if model.backbone.token_embedding.dtype_policy.name != "float32":
        raise errors.InputError(
            "convert_weights takes a float32 model. Received: dtype policy "
            f"{model.backbone.token_embedding.dtype_policy.name!r}."
        )
    _convert(model, weights)
    logger.debug("Converted the model's weights to %s.", weights)
    return model


def _convert(
    model,
    weights: str,
    int8_compute: str = _INT8_COMPUTE,
    int8_embedding: bool = True,
    int8_activations: bool = False,
):
    """`convert_weights` with the int8 variants `benchmarks/precision.py`
    measures: the matmul dtype, int8 or bfloat16 for the token embedding,
    and Keras' W8A8 (activations quantized per row)."""
    embedding = model.backbone.token_embedding
    if weights == "bfloat16":
        for layer in projections(model):
            _dense_to_bfloat16(layer)
        _embedding_to_bfloat16(embedding)
        return
    for layer in projections(model):
        _dense_to_int8(layer, int8_compute, int8_activations)
    if int8_embedding:
        _embedding_to_int8(embedding)
    else:
        _embedding_to_bfloat16(embedding)


def _replace(layer, attr: str, value, trainable: bool):
    """Replaces variable `layer.<attr>` by one holding `value` (its dtype)."""
    old = getattr(layer, attr)
    name = old.name
    delattr(layer, attr)
    locked = layer._tracker.locked
    layer._tracker.unlock()  # as `Layer.quantize` does
    try:
        variable = layer.add_weight(
            name=name,
            shape=value.shape,
            dtype=keras.backend.standardize_dtype(value.dtype),
            initializer="zeros",
            trainable=trainable,
        )
        setattr(layer, attr, variable)
    finally:
        if locked:
            layer._tracker.lock()
    variable.assign(value)
    return variable


def _bf16(variable):
    return keras.ops.convert_to_numpy(
        keras.ops.cast(variable.value, "bfloat16")
    )


def _dense_to_bfloat16(layer):
    _replace(layer, "_kernel", _bf16(layer._kernel), trainable=True)
    # Inputs are cast to bfloat16 on the way in; the float32 bias makes the
    # output float32 again.
    layer.dtype_policy = "bfloat16"


def _embedding_to_bfloat16(layer):
    _replace(layer, "_embeddings", _bf16(layer._embeddings), trainable=True)
    if not layer.tie_weights:
        _replace(
            layer,
            "reverse_embeddings",
            _bf16(layer.reverse_embeddings),
            trainable=True,
        )
    # The lookup stays float32 (the residual stream and KV cache follow the
    # layer's compute dtype); the output projection runs in bfloat16.
    layer.reverse_dtype = "bfloat16"


def _int8_config(activations: bool = False):
    """Keras int8: per-output-channel absmax weights; activations float."""
    return keras.quantizers.Int8QuantizationConfig(
        weight_quantizer=None,  # Keras' default: absmax per output channel
        activation_quantizer=(
            keras.quantizers.AbsMaxQuantizer(axis=-1) if activations else None
        ),
    )


def _dense_to_int8(layer, compute: str = _INT8_COMPUTE, activations=False):
    layer.quantize("int8", config=_int8_config(activations))
    if compute != "float32":
        # The scale variable stays float32 (it was made under float32); the
        # int8 kernel is cast to `compute` for the matmul.
        layer.dtype_policy = f"int8_from_{compute}"


def _embedding_to_int8(layer):
    layer.quantize("int8", config=_int8_config())


def converted(model, weights: str):
    """A converted copy of `model` (with its tokenizer); `model` is kept.

    Returns `model` itself when it already has `weights`. A LoRA model's
    adapters are merged into the copy (reduced weights are for inference).
    """
    check_weights(weights)
    if weights_of(model) == weights:
        return model
    if lora.lora_config(model) is not None:
        return convert_weights(lora.merged(model), weights)
    return convert_weights(clone(model), weights)


def clone(model):
    """A copy of `model`: its config (adapters included), weights,
    tokenizer, template and end ids."""
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.tokenizer = getattr(model, "tokenizer", None)
    copy.template = getattr(model, "template", None)
    copy.eos_ids = getattr(model, "eos_ids", ())
    return copy


def float32_values(model) -> dict:
    """`{variable path: float32 array}` of a converted `model`, as the
    float32 model it came from would hold them.

    bfloat16 kernels are cast up; int8 ones are divided by their scales (the
    token embedding's scale is per row, every other per output column). The
    scale variables themselves are left out. For training from a converted
    model: assign these to a freshly built float32 model (see
    `tflm.models.model_dir.load_model(..., weights="float32")`).
    """
    variables = {v.path: v for v in model.variables}
    values = {}
    for path, variable in variables.items():
        if path.endswith("_scale") and path[: -len("_scale")] in variables:
            continue
        value = keras.ops.convert_to_numpy(variable.value)
        if keras.backend.standardize_dtype(variable.dtype) == "int8":
            scale = keras.ops.convert_to_numpy(variables[path + "_scale"])
            if path.rsplit("/", 1)[-1] == "embeddings":
                scale = scale[:, None]
            value = value.astype("float32") / scale
        values[path] = value.astype("float32")
    return values


def reconverted(stored, build, weights: str):
    """A model with `weights` holding the values of converted `stored`.

    Args:
        stored: a converted model (bfloat16 or int8 weights).
        build: makes a new float32 model of the same architecture (and
            the dtype policy wanted, such as `"mixed_bfloat16"`).
        weights: one of `WEIGHTS`.
    """
    check_weights(weights)
    values = float32_values(stored)
    model = build()
    for variable in model.variables:
        variable.assign(values[variable.path])
    logger.info(
        "Loaded %s weights as float32 (cast up or dequantized).",
        weights_of(stored),
    )
    return convert_weights(model, weights)


# The model directory ------------------------------------------------------
CONFIG_KEY = "weights"


def config_entry(model) -> dict[str, str]:
    """What `config.json` records: `{"weights": ...}`, nothing for float32."""
    weights = weights_of(model)
    return {} if weights == "float32" else {CONFIG_KEY: weights}


def restore_weights(model, config: dict) -> None:
    """Converts a freshly built `model` to the weights `config` records, so
    that the stored (converted) variables load into it."""
    weights = config.get(CONFIG_KEY, "float32")
    if weights not in WEIGHTS:
        raise errors.InputError(
            f"config.json: {CONFIG_KEY} must be one of {', '.join(WEIGHTS)}. "
            f"Received: {CONFIG_KEY}={weights!r}."
        )
    convert_weights(model, weights)
