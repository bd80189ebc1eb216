"""GPT-2 from a keras-hub preset directory (`save_to_preset` layout).

The directory holds `config.json` (a `GPT2Backbone` config),
`model.weights.h5` and the tokenizer's `assets/tokenizer/vocabulary.json`
and `merges.txt`. The weights are read from the HDF5 file one tensor at a
time, by the paths Keras gives a `GPT2Backbone`'s layers, so keras-hub's
model is never built and the weights are held once.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from tflm import errors
from tflm import tokenizers
from tflm.importers import weights
from tflm.models import backbone as backbone_lib
from tflm.models import causal_lm
from tflm.models import presets
from tflm.tokenizers import gpt2_bpe
from tflm.tokenizers import hf_files

CONFIG_FILE = hf_files.MODEL_CONFIG_FILE
WEIGHTS_FILE = "model.weights.h5"
TOKENIZER_ASSETS = os.path.join("assets", "tokenizer")
BACKBONE_CLASS = "GPT2Backbone"
# keras-hub's GPT2Backbone: LayerNorm epsilon and activation are fixed.
LAYER_NORM_EPSILON = 1e-5
QKV = ("query", "key", "value")


def is_keras_hub_preset(config: dict[str, Any]) -> bool:
    """Whether a parsed `config.json` is a keras-hub (Keras) object config."""
    return "class_name" in config and isinstance(config.get("config"), dict)


def backbone_args(config: dict[str, Any], path: str) -> dict[str, Any]:
    """`Backbone` arguments from a keras-hub `GPT2Backbone` config."""
    name = config.get("class_name")
    if name != BACKBONE_CLASS:
        raise errors.InputError(
            f"{path}: class_name is {name!r}; tflm imports keras-hub GPT-2 "
            f"presets ({BACKBONE_CLASS}) only."
        )
    inner = config["config"]
    try:
        args = {
            key: int(inner[key])
            for key in (
                "vocabulary_size",
                "num_layers",
                "num_heads",
                "hidden_dim",
                "intermediate_dim",
                "max_sequence_length",
            )
        }
    except KeyError as err:
        raise errors.InputError(f"{path} lacks {err.args[0]!r}.") from None
    return dict(
        presets.GPT2_BLOCK,
        **args,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        dropout=float(inner.get("dropout", 0.1)),
    )


def _block_path(index: int) -> str:
    # Keras names saved layers by class, numbering repeats from `_1`.
    suffix = f"_{index}" if index else ""
    return f"layers/transformer_decoder{suffix}"


class _Weights:
    """`model.weights.h5` of a `GPT2Backbone`, read by dataset path."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise errors.InputError(f"{path} is missing.")
        try:
            self.file = h5py.File(path, "r")
        except OSError as err:
            raise errors.InputError(
                f"{path} is not a readable HDF5 file: {err}"
            ) from None

    def dataset(self, name: str):
        item = self.file.get(name)
        if not isinstance(item, h5py.Dataset):
            raise errors.InputError(
                f"{self.path}: tensor {name!r} is missing; this is not the "
                "GPT2Backbone that config.json describes."
            )
        return item

    def copy(self, name: str, variable) -> None:
        ds = self.dataset(name)
        row_bytes = 4 * int(np.prod(ds.shape[1:]))
        chunks = weights.row_chunks(
            lambda start, stop: ds[start:stop] if ds.shape else ds[()],
            ds.shape[0] if ds.shape else 1,
            row_bytes,
        )
        weights.assign(variable, ds.shape, chunks, self.path, name)

    def copy_joined(self, names: list[str], shape: tuple, variable) -> None:
        """Copies datasets `names`, each of `shape`, joined, into `variable`.

        keras-hub keeps the query, key and value kernels `(D, N, H)` and
        biases `(N, H)` apart, and the output kernel as `(N, H, D)`: each
        flattened to the variable's rows (`D`, or 1 for a bias) and joined
        on the last axis, they are tflm's.
        """
        parts = []
        for name in names:
            ds = self.dataset(name)
            if tuple(ds.shape) != tuple(shape):
                raise errors.InputError(
                    f"{self.path}: tensor {name!r} has shape "
                    f"{list(ds.shape)}, but the architecture in config.json "
                    f"needs {list(shape)}."
                )
            parts.append(ds[()])
        rows = variable.shape[0] if len(variable.shape) > 1 else 1
        joined = np.concatenate([p.reshape(rows, -1) for p in parts], axis=1)
        joined = joined.reshape(variable.shape)
        weights.assign(
            variable, joined.shape, [(0, joined)], self.path, names[0]
        )

    def close(self) -> None:
        self.file.close()


def _copy_weights(backbone: backbone_lib.Backbone, store: _Weights) -> None:
    store.copy(
        "layers/reversible_embedding/vars/0",
        backbone.token_embedding.embeddings,
    )
    store.copy(
        "layers/position_embedding/vars/0",
        backbone.position_embedding.embeddings,
    )
    for i, block in enumerate(backbone.blocks):
        base = _block_path(i)
        attention = f"{base}/_self_attention_layer"
        for hub, layer in (
            ("_self_attention_layer_norm", block.attention_norm),
            ("_feedforward_layer_norm", block.mlp_norm),
        ):
            store.copy(f"{base}/{hub}/vars/0", layer.gamma)
            store.copy(f"{base}/{hub}/vars/1", layer.beta)
        heads = (backbone.num_heads, backbone.head_dim)
        qkv = block.attention.query_key_value
        for index, variable, shape in (
            (0, qkv.kernel, (backbone.hidden_dim, *heads)),
            (1, qkv.bias, heads),
        ):
            names = [f"{attention}/{p}_dense/vars/{index}" for p in QKV]
            store.copy_joined(names, shape, variable)
        output = block.attention.output_dense
        store.copy_joined(
            [f"{attention}/output_dense/vars/0"],
            (*heads, backbone.hidden_dim),
            output.kernel,
        )
        store.copy(f"{attention}/output_dense/vars/1", output.bias)
        for hub, layer in (
            ("_feedforward_intermediate_dense", block.mlp_in),
            ("_feedforward_output_dense", block.mlp_out),
        ):
            store.copy(f"{base}/{hub}/vars/0", layer.kernel)
            store.copy(f"{base}/{hub}/vars/1", layer.bias)
    store.copy("layers/layer_normalization/vars/0", backbone.final_norm.gamma)
    store.copy("layers/layer_normalization/vars/1", backbone.final_norm.beta)


def load_keras_hub_gpt2(
    path: str | os.PathLike, **overrides
) -> tuple[causal_lm.CausalLM, tokenizers.Tokenizer]:
    """Builds a `CausalLM` and its tokenizer from a keras-hub GPT-2 preset.

    Args:
        path: a directory written by keras-hub's `save_to_preset` (of a
            `GPT2CausalLM`, or of a `GPT2Backbone` and its tokenizer).
        **overrides: `Backbone` arguments to change, such as `dropout`.

    Returns:
        `(model, tokenizer)`; `model.tokenizer` is set too.

    Raises:
        ValueError: naming the file (and tensor) that is wrong.
    """
    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    args = backbone_args(hf_files.read_json(config_path), config_path)
    weights.log_architecture(args, config_path)
    assets = os.path.join(path, TOKENIZER_ASSETS)
    tokenizer = gpt2_bpe.GPT2BPETokenizer(
        os.path.join(assets, "vocabulary.json"),
        os.path.join(assets, "merges.txt"),
    )
    weights.check_vocabulary(tokenizer, args["vocabulary_size"], config_path)
    store = _Weights(os.path.join(path, WEIGHTS_FILE))
    try:
        model = causal_lm.CausalLM(
            backbone_lib.Backbone(**{**args, **overrides})
        )
        _copy_weights(model.backbone, store)
    finally:
        store.close()
    model.tokenizer = tokenizer
    return model, tokenizer
