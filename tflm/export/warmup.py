"""TF Serving warm-up requests (`assets.extra/tf_serving_warmup_requests`).

TF Serving replays these `PredictionLog` records when it loads a version, so
the first real request does not pay for graph initialization.
"""

from __future__ import annotations

import os

import tensorflow as tf

WARMUP_FILE = "tf_serving_warmup_requests"


def _request(signature: str, inputs: dict):
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


def warmup_requests(
    max_new_tokens: int = 4, chat: bool = False, system: bool = True
) -> list:
    """One small request per signature, batch 1 and a batch of 2; with
    `chat`, also one of the `chat` signature (a model with a template)."""
    logs = []
    for prompts in (["Hello"], ["Hello", "A longer prompt to warm up"]):
        n = len(prompts)
        logs.append(
            _request(
                "serving_default",
                {
                    "prompt": tf.constant(prompts),
                    "max_new_tokens": tf.fill([n], max_new_tokens),
                    "temperature": tf.zeros([n]),
                    "top_k": tf.zeros([n], tf.int32),
                    "top_p": tf.ones([n]),
                    "seed": tf.zeros([n], tf.int32),
                },
            )
        )
    logs.append(_request("generate", full_request(["Hello"], max_new_tokens)))
    logs.append(_request("beam_search", beam_request(["Hello"], 2)))
    logs.append(_request("score", {"text": tf.constant(["Hello"])}))
    logs.append(_request("tokenize", {"text": tf.constant(["Hello"])}))
    logs.append(
        _request(
            "detokenize",
            {
                "token_ids": tf.constant([[0]], tf.int32),
                "num_tokens": tf.constant([0], tf.int32),
            },
        )
    )
    if chat:
        request = chat_request(max_new_tokens, system)
        logs.append(_request("chat", request))
    return logs


def chat_request(max_new_tokens: int = 4, system: bool = True) -> dict:
    """Inputs of the `chat` signature: two conversations (one padded; the
    first opens with a system turn where the template has one)."""
    role = [["system" if system else "user", "user"], ["user", ""]]
    content = [["Be brief.", "Hello"], ["Hi", ""]]
    return {
        "role": tf.constant(role),
        "content": tf.constant(content),
        "max_new_tokens": tf.fill([2], max_new_tokens),
        "temperature": tf.zeros([2]),
        "top_k": tf.zeros([2], tf.int32),
        "top_p": tf.ones([2]),
        "seed": tf.zeros([2], tf.int32),
    }


def full_request(prompts, max_new_tokens: int = 4) -> dict:
    """Inputs of the `generate` signature: every control at its default,
    `max_new_tokens` given, one stop string and no stop ids."""
    from tflm.generation import spec

    n = len(prompts)
    inputs = {"prompt": tf.constant(prompts)}
    for setting in spec.SPEC:
        inputs[setting.name] = tf.fill(
            [n], tf.constant(setting.default, setting.dtype)
        )
    inputs["max_new_tokens"] = tf.fill([n], max_new_tokens)
    inputs["stop"] = tf.fill([n, 1], "\n\n")
    inputs["stop_ids"] = tf.fill([n, 1], -1)
    return inputs


def beam_request(prompts, max_new_tokens: int = 4) -> dict:
    """Inputs of the `beam_search` signature: 2 beams, 1 sequence each."""
    n = len(prompts)
    return {
        "prompt": tf.constant(prompts),
        "max_new_tokens": tf.fill([n], max_new_tokens),
        "max_length": tf.fill([n], -1),
        "num_beams": tf.fill([n], 2),
        "num_return_sequences": tf.fill([n], 1),
        "length_penalty": tf.ones([n]),
        "early_stopping": tf.zeros([n], tf.bool),
    }


def write_warmup(
    saved_model_dir: str,
    max_new_tokens: int = 4,
    chat: bool = False,
    system: bool = True,
) -> str:
    """Writes the warm-up TFRecord file into `saved_model_dir`; returns it
    (`chat`: include a request of the `chat` signature, with a system turn
    where `system`)."""
    directory = os.path.join(saved_model_dir, "assets.extra")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(max_new_tokens, chat, system):
            writer.write(log.SerializeToString())
    return path


def read_warmup(path: str) -> list:
    """Parses a warm-up file back into `PredictionLog` messages."""
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
