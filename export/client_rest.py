"""A TF Serving REST client for tflm exports, standard library only.

    python client_rest.py "To be, or not to be" "Once upon a time" \
        --url http://localhost:8501/v1/models/tflm:predict \
        --max-new-tokens 32 --temperature 0.8 --top-k 40 --seed 1

`build_request` makes the JSON body (row format, or columnar with
`--columnar`); `predict` posts it and returns the parsed answer.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import urllib.error
import urllib.request

DEFAULT_URL = "http://localhost:8501/v1/models/tflm:predict"
SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


def _per_row(value, rows: int, name: str) -> list:
    values = list(value) if isinstance(value, list | tuple) else [value] * rows
    if len(values) != rows:
        raise ValueError(
            f"{name} needs one value per prompt. Received: {len(values)} "
            f"values for {rows} prompts."
        )
    return values


def _prompt(prompt: str | bytes):
    if isinstance(prompt, bytes):
        return {"b64": base64.b64encode(prompt).decode("ascii")}
    return prompt


def build_request(
    prompts: list[str | bytes],
    max_new_tokens: int | list[int] = 64,
    temperature: float | list[float] = 0.0,
    top_k: int | list[int] = 0,
    top_p: float | list[float] = 1.0,
    seed: int | list[int] = 0,
    *,
    columnar: bool = False,
) -> dict:
    """The JSON body of a `serving_default` request.

    Every input is sent for every prompt (the signature has no defaults);
    a scalar setting applies to all prompts. Byte strings that are not
    UTF-8 travel as `{"b64": ...}`.
    """
    rows = len(prompts)
    columns = {"prompt": [_prompt(p) for p in prompts]}
    values = (max_new_tokens, temperature, top_k, top_p, seed)
    casts = (int, float, int, float, int)
    for name, value, cast in zip(SETTINGS, values, casts, strict=True):
        columns[name] = [cast(v) for v in _per_row(value, rows, name)]
    if columnar:
        return {"signature_name": "serving_default", "inputs": columns}
    instances = [{k: v[i] for k, v in columns.items()} for i in range(rows)]
    return {"signature_name": "serving_default", "instances": instances}


def build_score_request(texts: list[str]) -> dict:
    """The JSON body of a `score` request (row format)."""
    return {"signature_name": "score", "instances": list(texts)}


def predict(url: str, body: dict, timeout: float = 120.0) -> dict:
    """Posts `body`; returns the parsed JSON answer or raises RuntimeError.

    TF Serving writes string outputs as they are, so `text` may hold bytes
    that are not UTF-8 (a byte-level model cutting a character); they are
    replaced with U+FFFD here. Use gRPC for the exact bytes.
    """
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as e:
        message = e.read().decode("utf-8", "replace")
        raise RuntimeError(f"HTTP {e.code}: {message}") from e
    return json.loads(payload.decode("utf-8", "replace"))


def texts(answer: dict) -> list[str]:
    """The generated texts of a `serving_default` answer, either format."""
    if "predictions" in answer:
        return [row["text"] for row in answer["predictions"]]
    return list(answer["outputs"]["text"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columnar", action="store_true")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    body = build_request(
        args.prompts,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        columnar=args.columnar,
    )
    answer = predict(args.url, body, args.timeout)
    for prompt, text in zip(args.prompts, texts(answer), strict=True):
        logging.info("%s%s", prompt, text)


if __name__ == "__main__":
    main()
