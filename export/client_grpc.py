"""A TF Serving gRPC client for tflm exports (`tensorflow-serving-api`).

    python client_grpc.py "To be, or not to be" --server localhost:8500 \
        --max-new-tokens 32 --temperature 0.8 --top-k 40 --seed 1

gRPC returns the exact bytes of `text` (REST writes them into JSON).
"""

from __future__ import annotations

import argparse
import logging

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

DTYPES = {
    "max_new_tokens": tf.int32,
    "temperature": tf.float32,
    "top_k": tf.int32,
    "top_p": tf.float32,
    "seed": tf.int32,
}


def _per_row(value, rows: int, name: str) -> list:
    values = list(value) if isinstance(value, list | tuple) else [value] * rows
    if len(values) != rows:
        raise ValueError(
            f"{name} needs one value per prompt. Received: {len(values)} "
            f"values for {rows} prompts."
        )
    return values


def build_request(
    prompts: list[str | bytes],
    max_new_tokens: int | list[int] = 64,
    temperature: float | list[float] = 0.0,
    top_k: int | list[int] = 0,
    top_p: float | list[float] = 1.0,
    seed: int | list[int] = 0,
    *,
    model_name: str = "tflm",
    version: int | None = None,
) -> predict_pb2.PredictRequest:
    """A `serving_default` PredictRequest; scalars apply to every prompt."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    if version is not None:
        request.model_spec.version.value = version
    rows = len(prompts)
    encoded = [p.encode("utf-8") if isinstance(p, str) else p for p in prompts]
    request.inputs["prompt"].CopyFrom(
        tf.make_tensor_proto(encoded, dtype=tf.string, shape=[rows])
    )
    values = (max_new_tokens, temperature, top_k, top_p, seed)
    for (name, dtype), value in zip(DTYPES.items(), values, strict=True):
        request.inputs[name].CopyFrom(
            tf.make_tensor_proto(
                _per_row(value, rows, name), dtype=dtype, shape=[rows]
            )
        )
    return request


def predict(
    server: str, request: predict_pb2.PredictRequest, timeout: float = 120.0
) -> dict:
    """Sends `request`; returns its outputs as numpy arrays."""
    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--server", default="localhost:8500")
    parser.add_argument("--model-name", default="tflm")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    request = build_request(
        args.prompts,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        model_name=args.model_name,
        version=args.version,
    )
    outputs = predict(args.server, request, args.timeout)
    for prompt, text, reason in zip(
        args.prompts, outputs["text"], outputs["stop_reason"], strict=True
    ):
        logging.info(
            "%s%s  [%s]",
            prompt,
            text.decode("utf-8", "replace"),
            reason.decode(),
        )


if __name__ == "__main__":
    main()
