"""Architecture presets: plain dicts of `Backbone` constructor arguments."""

from __future__ import annotations

import inspect

from tflm import errors

# GPT-2's block, whatever its size: the importers map checkpoints onto it.
GPT2_BLOCK = dict(
    norm="layernorm",
    activation="gelu",
    position_embedding="learned",
    use_bias=True,
    fused_qkv=True,
    tie_embeddings=True,
    layer_norm_epsilon=1e-5,
)

_GPT2 = dict(GPT2_BLOCK, vocabulary_size=50257, max_sequence_length=1024)

PRESETS: dict[str, dict] = {
    # For tests and docs: runs in milliseconds.
    "tiny": dict(
        vocabulary_size=32,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=32,
        max_sequence_length=16,
    ),
    # nanoGPT's CPU "baby GPT" for character-level Tiny Shakespeare.
    "nano-char": dict(
        vocabulary_size=260,
        num_layers=4,
        num_heads=4,
        hidden_dim=128,
        intermediate_dim=512,
        max_sequence_length=64,
    ),
    # `tflm quickstart`: learns the shape of a 0.5 MB corpus in minutes.
    "mini": dict(
        vocabulary_size=1024,
        num_layers=4,
        num_heads=4,
        hidden_dim=192,
        intermediate_dim=768,
        max_sequence_length=128,
    ),
    # The shape every benchmark uses.
    "bench-small": dict(
        vocabulary_size=8192,
        num_layers=6,
        num_heads=6,
        hidden_dim=384,
        intermediate_dim=1536,
        max_sequence_length=256,
    ),
    "gpt2-124m": dict(
        _GPT2,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
    ),
    "gpt2-355m": dict(
        _GPT2,
        num_layers=24,
        num_heads=16,
        hidden_dim=1024,
        intermediate_dim=4096,
    ),
    # A LLaMA-style block: RMSNorm, SwiGLU, rotary, grouped-query heads.
    "llama-110m": dict(
        vocabulary_size=32000,
        num_layers=12,
        num_heads=12,
        num_key_value_heads=4,
        hidden_dim=768,
        intermediate_dim=2048,
        max_sequence_length=2048,
        norm="rmsnorm",
        activation="swiglu",
        position_embedding="rotary",
        use_bias=False,
        tie_embeddings=False,
        layer_norm_epsilon=1e-6,
    ),
    # SmolLM2-135M's shape (a Llama block with grouped-query heads and a
    # tied head), for the Llama-family benchmarks.
    "llama-135m": dict(
        vocabulary_size=49152,
        num_layers=30,
        num_heads=9,
        num_key_value_heads=3,
        hidden_dim=576,
        intermediate_dim=1536,
        max_sequence_length=2048,
        norm="rmsnorm",
        activation="swiglu",
        position_embedding="rotary",
        rope_max_wavelength=100000.0,
        use_bias=False,
        fused_qkv=False,
        tie_embeddings=True,
        layer_norm_epsilon=1e-5,
    ),
}


# The peak learning rate `tflm train` uses for each preset (AdamW, linear
# warm-up over a tenth of the run, at most 100 steps, then cosine decay to a
# tenth). nano-char's and mini's are the best of a sweep of short runs on
# Tiny Shakespeare (docs/performance.md, "Learning rates for short runs");
# tiny's is the one its tests train with; bench-small's is nanoGPT's for its
# 6 x 384 Shakespeare model; the ~125M and ~350M presets follow GPT-3's
# table for their size.
LEARNING_RATES: dict[str, float] = {
    "tiny": 1e-2,
    "nano-char": 4e-3,
    "mini": 2e-3,
    "bench-small": 1e-3,
    "gpt2-124m": 6e-4,
    "gpt2-355m": 3e-4,
    "llama-110m": 6e-4,
    "llama-135m": 6e-4,
}


def learning_rate(name: str) -> float:
    """The default peak learning rate of preset `name` (`LEARNING_RATES`).

    Raises:
        InputError: an unknown preset.

    Example:
    >>> learning_rate("gpt2-124m")
    0.0006
    """
    get_preset(name)
    return LEARNING_RATES[name]


def get_preset(name: str, **overrides) -> dict:
    """Returns a copy of preset `name` with `overrides` merged in.

    Raises:
        InputError: an unknown preset (the message lists the known ones), or
            an override that is no `Backbone` argument.
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise errors.InputError(
            f"Unknown preset. Received: preset={name!r}. Available presets: "
            f"{', '.join(sorted(PRESETS))}."
        )
    # No overrides, no Backbone import: `tflm --help` reads preset contexts.
    unknown = overrides and sorted(set(overrides) - _backbone_arguments())
    if unknown:
        raise errors.InputError(
            f"Preset overrides must be Backbone arguments. Received: "
            f"{', '.join(f'{k}={overrides[k]!r}' for k in unknown)}. Known: "
            f"{', '.join(sorted(_backbone_arguments()))}."
        )
    return {**PRESETS[name], **overrides}


def _backbone_arguments() -> set[str]:
    # Imported here: the backbone module imports this one.
    from tflm.models import backbone

    parameters = inspect.signature(backbone.Backbone.__init__).parameters
    named = {
        n for n, p in parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD
    }
    return (named - {"self"}) | {"name", "trainable"}
