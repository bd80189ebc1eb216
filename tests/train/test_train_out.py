"""`--out` of a training run: symbolic links, and one run at a time."""

import os
import subprocess
import sys
import textwrap

import pytest
import train_helpers

from tflm import errors
from tflm.models import model_dir
from tflm.train import config as config_lib
from tflm.train import fit

corpus = train_helpers.corpus


def _train(corpus, out, **overrides):
    config = config_lib.TrainConfig(
        **train_helpers.tiny_config(corpus, out, **overrides)
    )
    return fit.train(config, verbose=0)


def test_training_into_a_symlink_writes_the_real_folder(corpus, tmp_path):
    real = tmp_path / "real_model"
    real.mkdir()
    (real / "NOTES.md").write_text("mine")  # an empty-of-models folder
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(errors.InputError, match="holds files but no tflm"):
        _train(corpus, link)
    os.remove(real / "NOTES.md")
    result = _train(corpus, link)  # checkpoints at steps 3 and 6
    assert result.step == 6
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert model_dir.is_model_dir(real)
    (real / "NOTES.md").write_text("mine")
    again = _train(corpus, link, steps=9)  # resumes through the link
    assert (again.start_step, again.step) == (6, 9)
    assert (real / "NOTES.md").read_text() == "mine"
    assert sorted(n for n in os.listdir(tmp_path) if n[0] == ".") == []


def test_a_dangling_symlink_is_refused(corpus, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(errors.InputError, match="symbolic link"):
        _train(corpus, link)
    assert os.listdir(tmp_path) == ["link"]


HOLD = textwrap.dedent(
    """
    import sys
    from tflm import atomic

    with atomic.lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_two_runs_on_one_out_are_refused(corpus, tmp_path):
    out = tmp_path / "model"
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(errors.InputError, match="another tflm run"):
            _train(corpus, out)
        assert not out.exists()
    finally:
        other.communicate("\n", timeout=30)
