"""The top-level `export/` serving kit: its REST bodies, configs and clients
work against a real export; the warm-up file holds runnable requests."""

import base64
import concurrent.futures
import glob
import http.server
import importlib.util
import json
import os
import re
import threading

import grpc
import pytest
import serving_helpers as helpers
import tensorflow as tf
import yaml
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tflm.export import warmup as warmup_lib

EXAMPLES = sorted(glob.glob(os.path.join(helpers.KIT, "examples", "*.json")))
README = os.path.join(helpers.KIT, "README.md")


def _load_module(name):
    path = os.path.join(helpers.KIT, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"kit_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client_rest = _load_module("client_rest")
client_grpc = _load_module("client_grpc")


def _readme():
    with open(README) as f:
        return f.read()


def _readme_json_blocks():
    return [
        json.loads(b) for b in re.findall(r"```json\n(.*?)```", _readme(), re.S)
    ]


def _is_request(body):
    return "instances" in body or "inputs" in body


def _example(name):
    with open(os.path.join(helpers.KIT, "examples", name)) as f:
        return json.load(f)


def _json_value(value):
    if isinstance(value, list):  # a row of a [B, K] input
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def _body_from_predict_request(request):
    """A columnar REST body with the tensors of a PredictRequest."""
    inputs = {
        name: [_json_value(v) for v in tf.make_ndarray(proto).tolist()]
        for name, proto in request.inputs.items()
    }
    signature = request.model_spec.signature_name or "serving_default"
    return {"signature_name": signature, "inputs": inputs}


def _grpc_request():
    rows = [
        ("To be, or not to be", 32, 0.0, 0, 1.0, 0),
        ("Once upon a time", 48, 0.8, 40, 0.95, 1234),
    ]
    prompts, *settings = (list(c) for c in zip(*rows, strict=True))
    return client_grpc.build_request(prompts, *settings)


@pytest.fixture(scope="module")
def kit_run():
    bodies = {f"example:{os.path.basename(p)}": _example(p) for p in EXAMPLES}
    for i, block in enumerate(_readme_json_blocks()):
        if _is_request(block):
            bodies[f"readme:{i}"] = block
    bodies["grpc"] = _body_from_predict_request(_grpc_request())
    logs = warmup_lib.read_warmup(
        os.path.join(
            helpers.byte_export(), "assets.extra", warmup_lib.WARMUP_FILE
        )
    )
    for i, log in enumerate(logs):
        body = _body_from_predict_request(log.predict_log.request)
        bodies[f"warmup:{i}"] = body
    report = helpers.serving_check(helpers.byte_export(), list(bodies.values()))
    return dict(zip(bodies, report["results"], strict=True))


def test_every_example_and_readme_body_runs(kit_run):
    failed = {k: r["error"] for k, r in kit_run.items() if "error" in r}
    assert failed == {}
    assert len([k for k in kit_run if k.startswith("readme:")]) >= 4
    row = kit_run["example:predict_row.json"]
    columnar = kit_run["example:predict_columnar.json"]
    assert (row["format"], columnar["format"]) == ("row", "columnar")
    assert row["outputs"] == columnar["outputs"] == kit_run["grpc"]["outputs"]
    assert set(row["outputs"]) == {
        "text",
        "token_ids",
        "num_tokens",
        "stop_reason",
    }


def test_readme_bodies_are_the_example_files():
    examples = [_example(p) for p in EXAMPLES]
    requests = [b for b in _readme_json_blocks() if _is_request(b)]
    for body in requests:
        assert body in examples, body
    for name in re.findall(r"@export/examples/([\w.]+)", _readme()):
        assert os.path.isfile(os.path.join(helpers.KIT, "examples", name))
    responses = [b for b in _readme_json_blocks() if "predictions" in b]
    contract_outputs = set(helpers.CONTRACT["serving_default"][1])
    for body in responses:
        for row in body["predictions"]:
            assert set(row) == contract_outputs


def test_warmup_file_holds_prediction_logs_for_every_signature(kit_run):
    path = os.path.join(helpers.byte_export(), "assets.extra")
    logs = warmup_lib.read_warmup(os.path.join(path, warmup_lib.WARMUP_FILE))
    names = {log.predict_log.request.model_spec.signature_name for log in logs}
    assert names == set(helpers.CONTRACT)
    assert all(log.WhichOneof("log_type") == "predict_log" for log in logs)
    warmup_results = [r for k, r in kit_run.items() if k.startswith("warmup:")]
    assert len(warmup_results) == len(logs)


def test_rest_client_builds_the_example_bodies():
    prompts = ["To be, or not to be", "Once upon a time"]
    settings = ([32, 48], [0.0, 0.8], [0, 40], [1.0, 0.95], [0, 1234])
    row = client_rest.build_request(prompts, *settings)
    assert row == _example("predict_row.json")
    columnar = client_rest.build_request(prompts, *settings, columnar=True)
    assert columnar == _example("predict_columnar.json")
    binary = client_rest.build_request([b"Hello \xff"], 16)
    assert binary["instances"] == _example("predict_b64.json")["instances"]
    assert client_rest.build_score_request(
        ["To be, or not to be", "To be, or not to bee"]
    ) == _example("score.json")
    with pytest.raises(ValueError, match="seed needs one value per prompt"):
        client_rest.build_request(prompts, seed=[1, 2, 3])


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("signature_name") == "missing":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "signature not found"}')
            return
        self.send_response(200)
        self.end_headers()
        # TF Serving writes string outputs as they are, even if not UTF-8.
        self.wfile.write(b'{"predictions": [{"text": "ab\xff"}]}')

    def log_message(self, *args):
        pass


def test_rest_client_posts_and_reads_the_answer():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1/models/tflm:predict"
    try:
        answer = client_rest.predict(url, client_rest.build_request(["a"]))
        assert client_rest.texts(answer) == ["ab\ufffd"]
        with pytest.raises(RuntimeError, match="HTTP 400"):
            client_rest.predict(url, {"signature_name": "missing"})
    finally:
        server.shutdown()
        server.server_close()


class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers Predict by running the export in-process (not TF Serving)."""

    def __init__(self, path):
        self.model = tf.saved_model.load(path)

    def Predict(self, request, context):  # noqa: N802
        function = self.model.signatures[request.model_spec.signature_name]
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
        response = predict_pb2.PredictResponse()
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response


def test_grpc_client_round_trip(kit_run):
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _Servicer(helpers.byte_export()), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        outputs = client_grpc.predict(f"127.0.0.1:{port}", _grpc_request())
    finally:
        server.stop(None)
    expected = kit_run["grpc"]["outputs"]
    assert [helpers.as_bytes(t) for t in expected["text"]] == list(
        outputs["text"]
    )
    assert outputs["num_tokens"].tolist() == expected["num_tokens"]
    request = _grpc_request()
    assert request.model_spec.name == "tflm"
    assert set(request.inputs) == set(helpers.CONTRACT["serving_default"][0])


def _batching_parameters_class():
    """`tensorflow.serving.BatchingParameters`, which the pip package lacks
    (fields and types from TF Serving's session_bundle_config.proto)."""
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    from google.protobuf import wrappers_pb2

    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(
        name="batching.proto",
        package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    int64 = ".google.protobuf.Int64Value"
    for number, name, type_name in [
        (1, "max_batch_size", int64),
        (2, "batch_timeout_micros", int64),
        (3, "max_enqueued_batches", int64),
        (4, "num_batch_threads", int64),
        (5, "thread_pool_name", ".google.protobuf.StringValue"),
    ]:
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=type_name,
            label=field.LABEL_OPTIONAL,
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        type=field.TYPE_INT64,
        label=field.LABEL_REPEATED,
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=field.TYPE_BOOL,
        label=field.LABEL_OPTIONAL,
    )
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName(
        "tensorflow.serving.BatchingParameters"
    )
    return message_factory.GetMessageClass(descriptor)


def test_config_files_parse_as_tf_serving_protos():
    with open(os.path.join(helpers.KIT, "models.config")) as f:
        config = text_format.Parse(
            f.read(), model_server_config_pb2.ModelServerConfig()
        )
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path) == ("tflm", "/models/tflm")
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 1
    with open(os.path.join(helpers.KIT, "batching.config")) as f:
        batching = text_format.Parse(f.read(), _batching_parameters_class()())
    assert batching.max_batch_size.value == 8
    assert batching.num_batch_threads.value >= 1
    assert batching.pad_variable_length_inputs


def test_docker_compose_matches_our_tensorflow():
    with open(os.path.join(helpers.KIT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    (service,) = compose["services"].values()
    major_minor = ".".join(tf.__version__.split(".")[:2])
    assert service["image"] == f"tensorflow/serving:{major_minor}.0"
    assert service["image"] in _readme()
    mounts = {re.search(r":(/[^:]+)(:ro)?$", v)[1] for v in service["volumes"]}
    assert {"/models/tflm", "/config/models.config"} <= mounts
    flags = dict(f.lstrip("-").split("=", 1) for f in service["command"])
    assert flags["model_config_file"] == "/config/models.config"
    assert flags["batching_parameters_file"] in mounts
    assert flags["enable_batching"] == "true"
