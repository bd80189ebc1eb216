"""Runs a SavedModel the way stock TF Serving does, without TF Serving.

    python serving_check.py SAVED_MODEL_DIR [--requests FILE] [--warmup]
        [--repeat N] [--xla]

(`SAVED_MODEL_DIR` `-`: import first, then read the path from stdin; `tflm
export` starts its warm-up replay that way, before the export is written.)

This file imports only `tensorflow`, `tensorflow_text` and the standard
library (never tflm), so it shows what an app or a server without tflm sees:

- XLA compilation is disabled through `tensorflow::DisableXlaCompilation()`,
  as `tensorflow_model_server` does unless `--xla_cpu_compilation_enabled`
  (`--xla` here);
- the model is loaded with a TF1 `Session` and
  `tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)`;
- requests are TF Serving REST bodies (`{"signature_name": ..., "instances":
  [...]}` or `{"inputs": {...}}`), turned into tensors by the rules of TF
  Serving's REST API, fed to the tensor names of the signature defs;
- with `--warmup`, `assets.extra/tf_serving_warmup_requests` is replayed
  first, as TF Serving does when it loads a version, up to the first
  request that fails (TF Serving then does not load the version).

It prints one JSON object: whether XLA is really off, the ops outside core
TensorFlow, the signature defs, and per request the outputs (columnar; text
as a string when it is valid UTF-8, else `{"b64": ...}`) or the error, with
the wall time of each run.
"""

import argparse
import base64
import ctypes
import json
import os
import sys
import time

import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
INT32 = (-(2**31), 2**31 - 1)


def disable_xla() -> dict:
    """Calls `tensorflow::DisableXlaCompilation()`; checks that it holds.

    Where the library or the function is missing (not Linux), XLA stays on
    and `xla_error` says why.
    """
    try:
        lib = ctypes.CDLL(
            os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2")
        )
        lib._ZN10tensorflow21DisableXlaCompilationEv()
    except (OSError, AttributeError) as e:
        return {"xla_disabled": False, "xla_error": f"not disabled: {e}"}
    try:
        double = tf.function(
            lambda x: x * 2.0, jit_compile=True, autograph=False
        )
        double(tf.constant(1.0))
        return {"xla_disabled": False, "xla_error": None}
    except Exception as e:  # noqa: BLE001
        message = str(e).strip().splitlines()[0]
        disabled = "XLA compilation disabled" in str(e)
        return {"xla_disabled": disabled, "xla_error": message}


def graph_ops(path: str) -> dict:
    """Op types of the `serve` graph and its functions, read from the file."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = next(
        m.graph_def
        for m in saved.meta_graphs
        if "serve" in m.meta_info_def.tags
    )
    ops = {n.op for n in graph.node}
    must_compile = []
    for function in graph.library.function:
        ops.update(n.op for n in function.node_def)
        attr = function.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            must_compile.append(function.signature.name)
    names = {f.signature.name for f in graph.library.function}
    return {"ops": sorted(ops - names), "must_compile": sorted(must_compile)}


def unregistered(ops) -> list:
    from tensorflow.python.framework import op_def_registry

    return sorted(op for op in ops if op_def_registry.get(op) is None)


def describe(meta_graph) -> dict:
    """The signature defs, as `saved_model_cli show --all` lists them."""
    from tensorflow.core.framework import types_pb2

    def info(tensor_info):
        shape = tensor_info.tensor_shape
        dims = None if shape.unknown_rank else [d.size for d in shape.dim]
        dtype = types_pb2.DataType.Name(tensor_info.dtype)
        return {"dtype": dtype, "shape": dims, "name": tensor_info.name}

    return {
        key: {
            "method_name": sig.method_name,
            "inputs": {k: info(v) for k, v in sig.inputs.items()},
            "outputs": {k: info(v) for k, v in sig.outputs.items()},
        }
        for key, sig in meta_graph.signature_def.items()
        if not key.startswith("__")
    }


# TF Serving REST (tensorflow_serving/util/json_tensor.cc) ------------------
def _is_b64(value) -> bool:
    return (
        isinstance(value, dict)
        and list(value) == ["b64"]
        and isinstance(value["b64"], str)
    )


def _scalar(value, dtype: str):
    if dtype == "string":
        if _is_b64(value):
            return base64.b64decode(value["b64"], validate=True)
        if isinstance(value, str):
            return value.encode("utf-8")
    elif dtype in ("float32", "float64"):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    elif dtype == "bool":
        if isinstance(value, bool):
            return value
    elif dtype in ("int32", "int64"):
        low, high = INT32 if dtype == "int32" else (-(2**63), 2**63 - 1)
        if type(value) is int and low <= value <= high:
            return value
    raise ValueError(
        f"JSON Value: {json.dumps(value)} is not of expected type: {dtype}"
    )


def to_array(value, dtype: str):
    """A JSON value as a numpy array of `dtype` (nested lists must be dense:
    `tf.constant` refuses ragged ones, as TF Serving does)."""

    def convert(v):
        if isinstance(v, list):
            return [convert(item) for item in v]
        return _scalar(v, dtype)

    tensor = tf.constant(convert(value), dtype=dtype)
    return tf.make_ndarray(tf.make_tensor_proto(tensor))


def _from_instances(instances, inputs: dict) -> dict:
    if not isinstance(instances, list) or not instances:
        raise ValueError("'instances' must be a non-empty list")
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not objects:
        if len(inputs) > 1:
            raise ValueError(
                "instances is a plain list, but expecting list of objects as "
                "multiple input tensors required as per tensorinfo_map"
            )
        instances = [{next(iter(inputs)): item} for item in instances]
    rows = {name: [] for name in inputs}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or set(item) != set(inputs):
            raise ValueError(
                f"Failed to process element: {i} of 'instances' list. keys "
                f"must be equal to: {','.join(sorted(inputs))}"
            )
        for name, value in item.items():
            rows[name].append(to_array(value, inputs[name]))
    arrays = {}
    for name, values in rows.items():
        if len({v.shape for v in values}) > 1:
            raise ValueError(f"{name}: every instance needs the same shape")
        arrays[name] = tf.stack(values).numpy() if values else None
    return arrays


def rest_to_arrays(body: dict, inputs: dict) -> tuple:
    """`(format, {input: array})` from a REST body; `inputs` maps names to
    dtypes. Row format stacks each input's per-instance values on dim 0."""
    if ("instances" in body) == ("inputs" in body):
        raise ValueError("expecting exactly one of 'inputs' or 'instances'")
    if "instances" in body:
        return "row", _from_instances(body["instances"], inputs)
    value = body["inputs"]
    if not isinstance(value, dict) or _is_b64(value):
        if len(inputs) > 1:
            raise ValueError(
                "inputs is a plain value/list, but expecting an object"
            )
        value = {next(iter(inputs)): value}
    missing = [name for name in inputs if name not in value]
    if missing:
        raise ValueError(
            f"Missing named input: {missing[0]} in 'inputs' object."
        )
    return "columnar", {n: to_array(value[n], d) for n, d in inputs.items()}


# Warm-up records: PredictionLog protos, read without tensorflow_serving ----
def _varint(buf: bytes, i: int) -> tuple:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes):
    """`(field number, value)` pairs of a serialized message (wire format)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield key >> 3, value


def warmup_requests(path: str) -> list:
    """`(signature_name, {input: array})` per `PredictionLog.predict_log`."""
    from tensorflow.core.framework import tensor_pb2

    requests = []
    for record in tf.data.TFRecordDataset(path):
        predict_log = dict(_fields(record.numpy())).get(6)  # predict_log
        if predict_log is None:
            raise ValueError("warm-up record is not a PredictLog")
        request = dict(_fields(predict_log))[1]  # PredictLog.request
        signature, arrays = "serving_default", {}
        for number, value in _fields(request):
            if number == 1:  # model_spec
                name = dict(_fields(value)).get(3)  # signature_name
                signature = name.decode() if name else signature
            elif number == 2:  # inputs map entry: key 1, TensorProto 2
                entry = dict(_fields(value))
                proto = tensor_pb2.TensorProto.FromString(entry.get(2, b""))
                arrays[entry[1].decode()] = tf.make_ndarray(proto)
        requests.append((signature, arrays))
    return requests


# Running -------------------------------------------------------------------
def _json_value(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value.item() if hasattr(value, "item") else value


def to_json(array) -> list:
    if getattr(array, "ndim", 0) == 0:
        return _json_value(array)
    return [to_json(item) for item in array]


def _error(e: Exception) -> dict:
    code = type(e).__name__
    if isinstance(e, ValueError | KeyError):
        code = "InvalidArgumentError"
    message = getattr(e, "message", None) or str(e)
    return {"code": code, "message": message.strip()}


class Server:
    """A loaded SavedModel in a TF1 session, run like TF Serving's Predict."""

    def __init__(self, path: str, threads: int = 0):
        from tensorflow.core.framework import types_pb2

        self.graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=threads,
            inter_op_parallelism_threads=threads,
        )
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(
                self.session, ["serve"], path
            )
        self.signatures = describe(meta_graph)
        self.dtypes = {
            key: {
                name: tf.as_dtype(types_pb2.DataType.Value(t["dtype"])).name
                for name, t in sig["inputs"].items()
            }
            for key, sig in self.signatures.items()
        }

    def run(self, signature: str, arrays: dict, repeat: int = 1) -> dict:
        sig = self.signatures.get(signature)
        if sig is None:
            raise ValueError(f"Serving signature name: {signature!r} not found")
        if set(arrays) != set(sig["inputs"]):
            raise ValueError(
                f"input size does not match signature: {len(arrays)}!="
                f"{len(sig['inputs'])} len({{{','.join(sorted(arrays))}}}) != "
                f"len({{{','.join(sorted(sig['inputs']))}}})"
            )
        feeds = {sig["inputs"][k]["name"]: v for k, v in arrays.items()}
        fetches = {k: t["name"] for k, t in sig["outputs"].items()}
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            outputs = self.session.run(fetches, feeds)
            seconds.append(time.perf_counter() - start)
        return {"outputs": outputs, "seconds": seconds}

    def rest(self, body: dict, repeat: int = 1) -> dict:
        """Runs one REST body; returns outputs or the error, as JSON."""
        signature = body.get("signature_name") or "serving_default"
        result = {"signature_name": signature}
        try:
            if signature not in self.dtypes:
                raise ValueError(
                    f"Serving signature name: {signature!r} not found"
                )
            result["format"], arrays = rest_to_arrays(
                body, self.dtypes[signature]
            )
            out = self.run(signature, arrays, repeat)
        except (tf.errors.OpError, ValueError, KeyError) as e:
            result["error"] = _error(e)
            return result
        result["outputs"] = {k: to_json(v) for k, v in out["outputs"].items()}
        result["seconds"] = out["seconds"]
        return result


def check(
    path,
    requests=(),
    warmup=False,
    repeat=1,
    threads=0,
    xla=False,
) -> dict:
    """Everything `main` prints, as a dict (`xla`: leave XLA on, as
    `--xla_cpu_compilation_enabled=true` does)."""
    report = {"xla_disabled": False, "xla_error": None}
    if not xla:
        report = disable_xla()
    report.update(tensorflow=tf.__version__, graph=graph_ops(path))
    report["non_core_ops"] = unregistered(report["graph"]["ops"])
    import tensorflow_text

    report["tensorflow_text"] = tensorflow_text.__version__
    report["unknown_ops"] = unregistered(report["graph"]["ops"])
    start = time.perf_counter()
    try:
        server = Server(path, threads)
    except (tf.errors.OpError, ValueError, RuntimeError) as e:
        report["load_error"] = _error(e)
        return report
    report["load_seconds"] = time.perf_counter() - start
    report["signatures"] = server.signatures
    if warmup:
        report["warmup"] = replay_warmup(server, path)
    report["results"] = [server.rest(body, repeat) for body in requests]
    return report


def replay_warmup(server: Server, path: str) -> list:
    """Replays the warm-up file as TF Serving does when it loads a version:
    in order, up to the first request that fails (which fails the load)."""
    replayed = []
    for signature, arrays in warmup_requests(os.path.join(path, WARMUP_FILE)):
        item = {"signature_name": signature}
        start = time.perf_counter()
        try:
            server.run(signature, arrays)
        except (tf.errors.OpError, ValueError) as e:
            item["error"] = _error(e)
        item["seconds"] = time.perf_counter() - start
        replayed.append(item)
        if "error" in item:
            break
    return replayed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "saved_model_dir", help="or -: import, then read it from stdin"
    )
    parser.add_argument(
        "--requests", help="JSON file: a TF Serving REST body, or a list"
    )
    parser.add_argument("--warmup", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra/inter-op threads"
    )
    parser.add_argument(
        "--xla",
        action="store_true",
        help="leave XLA on, as --xla_cpu_compilation_enabled=true does",
    )
    args = parser.parse_args(argv)
    if args.saved_model_dir == "-":  # imports done; the path comes later
        import tensorflow_text  # noqa: F401

        args.saved_model_dir = sys.stdin.read()
        if not args.saved_model_dir:
            return 1
    requests = []
    if args.requests:
        with open(args.requests) as f:
            requests = json.load(f)
        if isinstance(requests, dict):  # one REST body
            requests = [requests]
    report = check(
        args.saved_model_dir,
        requests,
        args.warmup,
        args.repeat,
        args.threads,
        args.xla,
    )
    print(json.dumps(report))
    failed = "load_error" in report or not (args.xla or report["xla_disabled"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
