"""Version folders, atomic writes, assets and the printed signature defs."""

import contextlib
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import serving_helpers as helpers
from tensorflow.python.tools import saved_model_cli

import tflm
from tflm import errors
from tflm import export as export_lib
from tflm.export import signatures as signatures_lib
from tflm.models import model_dir
from tflm.models.causal_lm import CausalLM
from tflm.tokenizers import ByteTokenizer

EXPORT_SCRIPT = textwrap.dedent(
    """
    import sys
    from tflm import export
    from tflm.models.causal_lm import CausalLM
    from tflm.tokenizers import ByteTokenizer

    lm = CausalLM.from_preset("tiny", vocabulary_size=259)
    lm.tokenizer = ByteTokenizer()
    export.export(lm, sys.argv[1])
    """
)


def _lm(context=64):
    lm = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=context
    )
    lm.tokenizer = ByteTokenizer()
    return lm


def test_layout_and_assets():
    path = helpers.byte_export()
    assert os.path.basename(path) == "1"
    for name in (
        "saved_model.pb",
        "variables/variables.index",
        "assets/tflm_config.json",
        "assets/tflm_version.txt",
        "assets.extra/tf_serving_warmup_requests",
    ):
        assert os.path.isfile(os.path.join(path, name)), name
    with open(os.path.join(path, "assets", "tflm_version.txt")) as f:
        assert f.read().strip() == tflm.__version__
    with open(os.path.join(path, "assets", "tflm_config.json")) as f:
        config = json.load(f)
    assert config["backbone"]["max_sequence_length"] == helpers.CONTEXT
    assert config["tokenizer"]["type"] == "byte"
    # The same writer as a model directory's config.json.
    assert sorted(config) == sorted(
        model_dir.model_config(_lm(), ByteTokenizer())
    )
    # Readable by a server running as another user (mkdtemp makes 0700).
    assert os.stat(path).st_mode & stat.S_IROTH


def test_versions_overwrite_and_auto_increment(tmp_path):
    base = str(tmp_path)
    os.makedirs(os.path.join(base, "3"))
    first = export_lib.export(_lm(), base)
    assert first == os.path.join(base, "4")
    with pytest.raises(errors.InputError, match="overwrite"):
        export_lib.export(_lm(), base, version=4)
    export_lib.export(
        _lm(context=32), base, version=4, overwrite=True, warmup=False
    )
    with open(os.path.join(first, "assets", "tflm_config.json")) as f:
        assert json.load(f)["backbone"]["max_sequence_length"] == 32
    # Replaced whole: nothing of the old version is left in it.
    assert not os.path.exists(os.path.join(first, "assets.extra"))
    assert export_lib.existing_versions(base) == [3, 4]
    assert sorted(os.listdir(base)) == ["3", "4"]  # no temporary folders


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(signatures_lib, "ServingModule", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_lib.export(_lm(), str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_killed_export_leaves_no_version(tmp_path):
    base = str(tmp_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORT_SCRIPT, base],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill once the SavedModel is being written into the temporary folder.
        writing = None
        while proc.poll() is None and writing is None:
            for name in os.listdir(base):
                if name.startswith(".tflm-export.") and os.listdir(
                    os.path.join(base, name)
                ):
                    writing = name
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert writing is not None and proc.returncode == -signal.SIGKILL
    assert export_lib.existing_versions(base) == []
    # What is left is hidden and not a number: TF Serving ignores it.
    assert all(not re.fullmatch(r"\d+", n) for n in os.listdir(base))
    # The next export sweeps it, since its process is gone.
    export_lib.export(_lm(), base, warmup=False)
    assert os.listdir(base) == ["1"]


def test_concurrent_exports_get_distinct_versions(tmp_path):
    base, paths, failures = str(tmp_path), [], []
    models = [_lm(), _lm()]
    barrier = threading.Barrier(2)

    def run(model):
        try:
            barrier.wait()
            paths.append(export_lib.export(model, base, warmup=False))
        except BaseException as err:  # reported below
            failures.append(err)

    threads = [threading.Thread(target=run, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(paths) == [os.path.join(base, "1"), os.path.join(base, "2")]
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_base_that_is_a_file_or_dangling_link_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.InputError, match="is a file"):
        export_lib.export(_lm(), str(tmp_path / "file"))
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(errors.InputError, match="symbolic link"):
        export_lib.export(_lm(), str(tmp_path / "link"))
    with pytest.raises(errors.InputError, match="positive"):
        export_lib.export(_lm(), str(tmp_path / "base"), version=0)


def _saved_model_cli_show_all(path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        saved_model_cli._show_all(path)
    return out.getvalue()


def test_saved_model_cli_shows_the_contract():
    text = _saved_model_cli_show_all(helpers.byte_export())
    shown = {}
    sections = re.split(r"\nsignature_def\['(\w+)'\]:", text)[1:]
    for key, body in zip(sections[::2], sections[1::2], strict=True):
        if key.startswith("__"):
            continue
        tensors = re.findall(
            r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+"
            r"shape: \(([^)]*)\)",
            body,
        )
        sides = {"inputs": {}, "outputs": {}}
        for side, name, dtype, shape in tensors:
            dims = [int(d) for d in shape.split(",") if d.strip()]
            sides[side][name] = (dtype, dims)
        assert "Method name is: tensorflow/serving/predict" in body
        shown[key] = (sides["inputs"], sides["outputs"])
    assert shown == helpers.CONTRACT
