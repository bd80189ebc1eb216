"""TF Serving warm-up requests (`assets.extra/tf_serving_warmup_requests`).

TF Serving replays these `PredictionLog` records when it loads a version, so
the first real request does not pay for graph initialization.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import tensorflow as tf

WARMUP_FILE = "tf_serving_warmup_requests"
SERVING_CHECK = os.path.join(os.path.dirname(__file__), "serving_check.py")


class WarmupError(RuntimeError):
    """An export's own warm-up request failed as TF Serving would run it,
    so TF Serving would refuse the version: a bug in tflm."""


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


class Replay:
    """Replays an export's warm-up file the way TF Serving does when it
    loads a version.

    The replaying process starts at construction, so that its imports
    overlap the export's own work; `run` then hands it the version folder.
    It runs `serving_check.py --warmup` and imports only TensorFlow and TF
    Text: a TF1 session loader, XLA disabled through
    `tensorflow::DisableXlaCompilation()` (left on with `xla`, as
    `--xla_cpu_compilation_enabled=true` does), each record fed to its
    signature in order, up to the first that fails. GPUs are hidden from
    it: the exporting process may hold their memory. Use it as a context
    manager: on exit an unused process is stopped.

    Args:
        xla: the export compiles with XLA (the server needs its XLA flag).
    """

    def __init__(self, xla: bool = False):
        command = [sys.executable, SERVING_CHECK, "-", "--warmup"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["CUDA_VISIBLE_DEVICES"] = ""
        self._process = subprocess.Popen(
            command + (["--xla"] if xla else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
        )

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc) -> None:
        if self._process.returncode is None:  # `run` was not reached
            self._process.kill()
            self._process.communicate()

    def run(self, saved_model_dir: str) -> float:
        """Replays the warm-up file of `saved_model_dir`; returns the
        seconds spent after the export was ready.

        Raises:
            WarmupError: the version failed to load, or a record failed;
                the message is one line naming the signature and the error.
        """
        start = time.perf_counter()
        stdout, stderr = self._process.communicate(saved_model_dir)
        try:
            report = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            code = f"exit {self._process.returncode}"
            report = {"load_error": {"code": code}}
            report["load_error"]["message"] = _last_line(stderr)
        if "load_error" in report:
            raise WarmupError(_failed("loading it", report["load_error"]))
        for number, item in enumerate(report["warmup"], 1):
            if "error" in item:
                what = (
                    f"warm-up request {number} (signature "
                    f"{item['signature_name']!r})"
                )
                raise WarmupError(_failed(what, item["error"]))
        return time.perf_counter() - start


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _failed(what: str, error: dict) -> str:
    message = " ".join(
        line.strip()
        for line in error["message"].splitlines()
        if line.strip() and line.strip() != "Graph execution error:"
    )
    if len(message) > 400:
        message = message[:400] + "..."
    return (
        f"the export failed {what} under TF Serving's conditions, so TF "
        f"Serving would refuse this version; nothing was published: "
        f"{error['code']}: {message}"
    )
