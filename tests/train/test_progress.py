"""The progress line of `tflm train`: what it shows, and how it is written
to a terminal, a file and on Ctrl-C."""

import io
import re

import keras
import pytest
import train_helpers

from tflm.train import config as config_lib
from tflm.train import fit
from tflm.train import progress

corpus = train_helpers.corpus


def _bar(out, **kwargs):
    values = dict(total_steps=1000, chunk_steps=100, tokens_per_step=64)
    return progress.ProgressBar(stream=out, **{**values, **kwargs})


def test_the_loss_shown_is_the_mean_of_the_last_steps_not_of_the_chunk():
    out = io.StringIO()
    bar = _bar(out, window=20, every=1000, interactive=False)
    losses = [10.0 - 0.01 * step for step in range(1, 351)]
    for step, loss in enumerate(losses, start=1):
        bar.update(step, loss, tokens_per_second=64.0)
    bar.end_chunk()
    line = out.getvalue()
    recent = sum(losses[-20:]) / 20
    assert f"loss {recent:.4f} (mean of the last 20 steps)" in line
    assert line.startswith("steps 301-400 of 1000: step 350,")
    assert "64 tokens/s" in line
    assert "10:50 left" in line  # 650 steps of 64 tokens at 64 tokens/s.


def test_a_file_gets_a_plain_line_every_n_steps_and_at_each_chunk_end():
    out = io.StringIO()
    bar = _bar(out, total_steps=250, every=40, interactive=False)
    for step in range(1, 251):
        bar.update(step, 2.0, tokens_per_second=100.0)
        if step % 100 == 0 or step == 250:
            bar.end_chunk(1.5 if step == 200 else None)
    lines = out.getvalue().splitlines()
    steps = [int(re.search(r": step (\d+),", line)[1]) for line in lines]
    assert steps == [40, 80, 100, 120, 160, 200, 240, 250]
    assert lines[2].startswith("steps 1-100 of 250: step 100,")
    assert lines[5].endswith(", validation loss 1.5000")
    assert lines[-1].startswith("steps 201-250 of 250: step 250,")
    assert not re.search(r"[\x1b\b\r]", out.getvalue())


def test_a_terminal_line_is_rewritten_in_place_and_ended_on_close(
    monkeypatch,
):
    monkeypatch.setenv("COLUMNS", "120")  # The line is cut to the terminal.
    out = io.StringIO()
    bar = _bar(out, total_steps=4, interactive=True)
    bar.update(1, 3.0, tokens_per_second=10.0)
    bar.update(2, 2.0, tokens_per_second=10.0)
    assert out.getvalue().count("\r") == 2
    assert not out.getvalue().endswith("\n")
    bar.close()
    assert out.getvalue().endswith(
        "loss 2.5000 (mean of the last 2 steps), 10 tokens/s, 0:12 left\n"
    )
    assert not re.search(r"[\x1b\b]", out.getvalue())


class _InterruptedTerminal(io.StringIO):
    """A terminal whose next write lands and is then interrupted, as a
    Ctrl-C that arrives while the line is written."""

    interrupt = False

    def write(self, text):
        written = super().write(text)
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return written


def test_a_ctrl_c_during_the_write_still_ends_the_line_on_close(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    out = _InterruptedTerminal()
    bar = _bar(out, total_steps=4, interactive=True)
    bar.update(1, 3.0, tokens_per_second=10.0)
    bar.end_chunk()  # The chunk's line ended: nothing is open.
    out.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        bar.update(3, 2.0, tokens_per_second=10.0)
    bar.close()
    assert out.getvalue().endswith(
        "step 3, loss 2.5000 (mean of the last 2 steps), 10 tokens/s, "
        "0:06 left\n"
    ), out.getvalue()


def _config(corpus, out, **overrides):
    return config_lib.TrainConfig(
        **train_helpers.tiny_config(corpus, out, **overrides)
    )


def test_training_output_to_a_file_names_the_steps_and_has_no_codes(
    corpus, tmp_path, capsys
):
    fit.train(_config(corpus, tmp_path / "model", log_every=2))
    printed = capsys.readouterr().out
    assert not re.search(r"[\x1b\b\r]", printed), repr(printed)
    assert "Epoch" not in printed
    lines = printed.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "steps 1-3 of 6",
        "steps 1-3 of 6",
        "steps 4-6 of 6",
        "steps 4-6 of 6",
    ]
    assert "validation loss" in lines[1] and "validation loss" in lines[3]


class _CtrlC(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == 5:
            raise KeyboardInterrupt


def test_ctrl_c_says_which_step_was_kept_and_the_rerun_resumes_there(
    corpus, tmp_path, capsys
):
    config = _config(corpus, tmp_path / "model", validate_every=0)
    with pytest.raises(fit.TrainingInterrupted) as caught:
        fit.train(config, callbacks=[_CtrlC()])
    message = str(caught.value)
    assert message.startswith("interrupted at step 5 of 6.")
    assert "keeps step 3, its last checkpoint" in message
    assert "run the same command again to resume from step 3" in message
    assert isinstance(caught.value, KeyboardInterrupt)
    assert capsys.readouterr().out.endswith("\n")
    resumed = fit.train(config, verbose=0)
    assert (resumed.start_step, resumed.step) == (3, 6)
