"""`tflm export` replays its warm-up records as TF Serving does before it
publishes a version: a record that fails leaves nothing behind and says, in
one line, which signature failed and why. `--weights bfloat16` warns once on
a CPU without AVX-512 BF16 or AMX-BF16."""

import contextlib
import io
import os

import pytest
import tensorflow as tf

from tflm import cli
from tflm.export import host
from tflm.export import warmup as warmup_lib
from tflm.models import model_dir
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import ByteTokenizer

# /proc/cpuinfo of a CPU with AVX-512 but neither bfloat16 feature.
NO_BF16 = """processor\t: 0
model name\t: Some x86 CPU
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni

processor\t: 1
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""


def _bad_detokenize():
    """A warm-up record TF Serving would fail: `num_tokens` above the
    width of `token_ids`."""
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "detokenize"
    inputs = {"token_ids": tf.constant([[5]]), "num_tokens": tf.constant([3])}
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


@pytest.fixture(scope="module")
def failed(tmp_path_factory):
    """`tflm export --weights bfloat16` on a host without bfloat16
    instructions, with a failing warm-up record first in the file."""
    root = tmp_path_factory.mktemp("replay")
    lm = CausalLM.from_preset("tiny", vocabulary_size=259)
    directory = str(root / "model")
    model_dir.save(lm, ByteTokenizer(), directory)
    cpuinfo = root / "cpuinfo"
    cpuinfo.write_text(NO_BF16)
    own = warmup_lib.warmup_requests
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(host, "CPUINFO", str(cpuinfo))
        patch.setattr(
            warmup_lib,
            "warmup_requests",
            lambda *args: [_bad_detokenize(), *own(*args)],
        )
        argv = ["export", directory, "--out", str(root / "serving")]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv + ["--weights", "bfloat16"])
    return code, out.getvalue(), err.getvalue(), str(root / "serving")


def test_a_failed_warmup_record_publishes_nothing(failed):
    code, out, err, base = failed
    assert code == 1, err  # our own request failed: a bug in tflm
    assert out == ""
    assert os.listdir(base) == []  # no version, no temporary folder
    line = next(x for x in err.splitlines() if "WarmupError" in x)
    assert line.startswith("tflm export: internal error: WarmupError: ")
    assert "signature 'detokenize'" in line
    assert "InvalidArgumentError" in line and "num_tokens" in line
    assert "nothing was published" in line


def test_bfloat16_warns_once_on_a_cpu_without_its_instructions(failed):
    _, _, err, _ = failed
    warnings = [x for x in err.splitlines() if "AVX-512 BF16" in x]
    assert len(warnings) == 1
    assert "AMX-BF16" in warnings[0] and "slower than float32" in warnings[0]


def test_cpu_features_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(NO_BF16)
    flags = host.cpu_flags(str(cpuinfo))
    assert "avx512f" in flags and "avx512_bf16" not in flags  # first CPU
    assert host.bf16_features(flags) == {
        "avx512_bf16": False,
        "amx_bf16": False,
    }
    assert host.bf16_warning(flags) is not None
    cpuinfo.write_text(NO_BF16.replace("avx512_vnni\n", "amx_bf16\n", 1))
    assert host.bf16_warning(host.cpu_flags(str(cpuinfo))) is None
    # An ARM /proc/cpuinfo has `Features`, not `flags`: nothing is known.
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert host.cpu_flags(str(cpuinfo)) is None
    assert host.bf16_warning(None) is None
    described = host.describe(str(tmp_path / "missing"))
    assert described["bf16_features"] is None and described["cpus"] >= 1
