"""The user-facing `generate` and `stream` of `CausalLM`.

Prompts are strings (encoded with the model's tokenizer) or token ids. An
empty string prompt starts from the end-of-text id, which is what the model
saw before every document in training. Output follows input: strings for
strings, lists of ids for ids; a single prompt gives a single result.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np

from tflm import errors
from tflm.models import generator as generator_lib


def _tokenizer(model, tokenizer):
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise errors.InputError(
            "Text prompts need a tokenizer: load the model with "
            "`tflm.modeldir.load(...)`, set `model.tokenizer`, pass "
            "`tokenizer=`, or give token ids instead of strings."
        )
    return tokenizer


def _rows(prompts, tokenizer) -> tuple[list[list[int]], bool, bool]:
    """Returns `(id lists, single, is_text)`."""
    if hasattr(prompts, "numpy") and not isinstance(prompts, np.ndarray):
        prompts = prompts.numpy()  # a tf.Tensor of ids or strings
        if prompts.dtype == object:
            prompts = [p.decode("utf-8") for p in prompts.reshape(-1)]
    if isinstance(prompts, str):
        prompts, single = [prompts], True
    elif isinstance(prompts, np.ndarray) and prompts.ndim == 1:
        prompts, single = [prompts.tolist()], True
    elif (
        isinstance(prompts, Sequence)
        and prompts
        and all(isinstance(p, (int, np.integer)) for p in prompts)
    ):
        prompts, single = [list(prompts)], True
    else:
        prompts, single = list(prompts), False
    if all(isinstance(p, str) for p in prompts):
        if not prompts:
            return [], single, True
        ragged = tokenizer.tokenize(prompts)
        rows = [r if r else [tokenizer.eos_id] for r in ragged.to_list()]
        return rows, single, True
    rows = [np.asarray(p, dtype=np.int64).reshape(-1).tolist() for p in prompts]
    if any(not r for r in rows):
        raise errors.InputError(
            "A prompt of token ids is empty. Give at least one id (e.g. the "
            "end-of-text id to start a new document)."
        )
    return rows, single, False


def _stop_ids(stop, tokenizer) -> list[int]:
    ids = []
    for item in stop or []:
        if isinstance(item, str):
            pieces = tokenizer.tokenize(item).numpy().tolist()
            if len(pieces) != 1:
                raise errors.InputError(
                    f"A stop string must be exactly one token. Received: "
                    f"{item!r}, which is {len(pieces)} tokens {pieces}. Choose "
                    "a stop string that is one token (a newline, a "
                    "punctuation mark), or pass its token id in Python."
                )
            ids.extend(pieces)
        else:
            ids.append(int(item))
    return ids


def _setup(
    model,
    prompts,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    stop,
    tokenizer,
    jit_compile,
):
    if max_new_tokens is None:
        max_new_tokens = min(64, model.backbone.max_sequence_length - 1)
    needs_text = (
        isinstance(prompts, str)
        or any(isinstance(s, str) for s in (stop or []))
        or (
            isinstance(prompts, Sequence)
            and any(isinstance(p, str) for p in prompts)
        )
    )
    tok = (
        _tokenizer(model, tokenizer)
        if needs_text
        else (tokenizer or getattr(model, "tokenizer", None))
    )
    rows, single, is_text = _rows(prompts, tok)
    vocab = model.backbone.vocabulary_size
    if any(not 0 <= i < vocab for r in rows for i in r):
        raise errors.InputError(f"Token ids must be in [0, {vocab}).")
    key = bool(jit_compile)
    if key not in model._generators:
        model._generators[key] = generator_lib.Generator(model, jit_compile=key)
    gen = model._generators[key]
    eos_id = tok.eos_id if tok is not None else -1
    pad_id = tok.pad_id if tok is not None else 0
    if not rows:
        return gen, None, single, is_text, tok
    inputs = gen.prepare(
        rows,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        _stop_ids(stop, tok),
        eos_id,
        pad_id,
    )
    return gen, inputs, single, is_text, tok


def generate(
    model,
    prompts,
    max_new_tokens: int | None = None,
    *,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    stop=None,
    tokenizer=None,
    jit_compile: bool = True,
    return_details: bool = False,
):
    """Continues each prompt.

    Args:
        model: a `CausalLM`.
        prompts: a string, a list of strings, a list of ids, or a list of id
            lists (of different lengths).
        max_new_tokens: int, or one per prompt. Defaults to 64, or fewer
            when the context is shorter (`context - 1`).
        temperature: float or one per prompt; `0` is greedy.
        top_k: int or one per prompt; `0` is off.
        top_p: float in (0, 1] or one per prompt; `1` is off.
        seed: int or one per prompt; same seed and inputs give the same text.
        stop: extra stop tokens: ids, or strings that are one token each.
            End-of-text always stops. Stop tokens are not returned.
        tokenizer: overrides `model.tokenizer`.
        jit_compile: compile the loop with XLA.
        return_details: also return `num_tokens` and `stop_reason` per row.

    Returns:
        The continuations (without the prompt): strings for text prompts,
        id lists for id prompts; one item for a single prompt. With
        `return_details`, a dict with `outputs`, `token_ids`, `num_tokens`
        and `stop_reason`.
    """
    gen, inputs, single, is_text, tok = _setup(
        model,
        prompts,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        stop,
        tokenizer,
        jit_compile,
    )
    if inputs is None:
        return []
    out = gen.run(*inputs)
    ids = [
        row[:n].tolist()
        for row, n in zip(out["token_ids"], out["num_tokens"], strict=True)
    ]
    outputs = ids
    if is_text:
        outputs = [
            t.decode("utf-8", "replace")
            for t in tok.detokenize(_ragged(ids)).numpy().tolist()
        ]
    if return_details:
        from tflm.generation import loop

        return {
            "outputs": outputs[0] if single else outputs,
            "token_ids": ids,
            "num_tokens": out["num_tokens"].tolist(),
            "stop_reason": [loop.STOP_REASONS[r] for r in out["stop_reason"]],
        }
    return outputs[0] if single else outputs


def _ragged(ids):
    import tensorflow as tf

    return tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)


def stream(
    model,
    prompt: str,
    max_new_tokens: int | None = None,
    *,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    stop=None,
    tokenizer=None,
    chunk: int = 1,
) -> Iterator[str]:
    """Yields pieces of one prompt's continuation as they are produced.

    Runs the plain graph (no XLA): joined, the pieces equal
    `generate(prompt, ..., jit_compile=False)` with the same settings.
    Pieces end on whole characters: bytes of a character split across tokens
    wait for the rest. `chunk` is the number of tokens decoded per piece.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise errors.InputError(
            f"chunk must be an int >= 1. Received: {chunk!r}."
        )
    gen, inputs, _, _, tok = _setup(
        model,
        prompt,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        stop,
        tokenizer,
        False,
    )
    if tok is None or not isinstance(prompt, str):
        raise errors.InputError(
            "stream takes one text prompt and needs a tokenizer."
        )
    sent = ""
    for token_ids, num_tokens in gen.stream(*inputs, chunk=chunk):
        text = tok.detokenize(token_ids[0, : num_tokens[0]]).numpy()
        text = text.decode("utf-8", "replace")
        if text.endswith("\ufffd"):
            continue  # a character is still incomplete
        if len(text) > len(sent):
            yield text[len(sent) :]
            sent = text
    if len(text) > len(sent):
        yield text[len(sent) :]
