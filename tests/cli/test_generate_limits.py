"""`tflm generate` refuses requests past the served caps (issue 26): one
line, exit 2, before any decoding (they used to be killed at 6 GB or end in
`ResourceExhaustedError`)."""

import time

import pytest

from tflm import cli
from tflm.models import CausalLM
from tflm.models import model_dir as model_dir_lib
from tflm.tokenizers import ByteTokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    lm = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=32
    )
    path = str(tmp_path_factory.mktemp("limits") / "model")
    model_dir_lib.save(lm, ByteTokenizer(), path)
    return path


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--num-return-sequences", "100000000"], "num_return_sequences"),
        (["--num-beams", "1000000"], "num_beams"),
        (["--num-beams", "-1"], "num_beams"),
        (["--num-beams", "0", "--num-return-sequences", "0"], "num_"),
        (["--no-repeat-ngram-size", "2147483647"], "no_repeat_ngram_size"),
    ],
)
def test_generate_refuses_requests_past_the_caps(
    model_dir, capsys, flags, named
):
    start = time.monotonic()
    argv = ["generate", model_dir, "--prompt", "a", *flags]
    assert cli.main(argv) == 2
    assert time.monotonic() - start < 30  # loading the model, no decoding
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], captured.err
    assert "Traceback" not in captured.err
