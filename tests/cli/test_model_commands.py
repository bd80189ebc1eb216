"""The model-directory commands: generate, export, quickstart."""

import ast
import io
import os
import random

import pytest

from tflm import cli
from tflm import export
from tflm import quickstart
from tflm.models import CausalLM
from tflm.models import model_dir as model_dir_lib
from tflm.tokenizers import ByteTokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    lm = CausalLM.from_preset(
        "tiny", vocabulary_size=259, max_sequence_length=32
    )
    path = str(tmp_path_factory.mktemp("cmd") / "model")
    model_dir_lib.save(lm, ByteTokenizer(), path)
    return path


def test_generate_prints_what_generate_returns(model_dir, capsys):
    expected = CausalLM.from_preset(model_dir).generate(
        ["ab", "xyz"], 6, jit_compile=False
    )
    argv = ["generate", model_dir, "--prompt", "ab", "--prompt", "xyz"]
    assert cli.main(argv + ["--max-new-tokens", "6", "--no-xla"]) == 0
    out = capsys.readouterr().out
    assert out == (f"--- 1: ab\n{expected[0]}\n--- 2: xyz\n{expected[1]}\n")


def test_generate_reads_prompts_from_stdin_and_streams(
    model_dir, capsys, monkeypatch
):
    expected = CausalLM.from_preset(model_dir).generate("hi", 5)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"hi\n")))
    argv = ["generate", model_dir, "--max-new-tokens", "5", "--stream"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_bad_input_exits_2(model_dir, capsys):
    argv = ["generate", model_dir, "--prompt", "a", "--top-p", "0"]
    assert cli.main(argv) == 2
    assert "top_p" in capsys.readouterr().err
    assert cli.main(["generate", str(model_dir) + "-missing", "--prompt", "a"])


@pytest.mark.parametrize(
    "flags, name",
    [
        (["--repetition-penalty", "0"], "repetition_penalty"),
        (["--num-return-sequences", "0"], "num_return_sequences"),
        (["--no-repeat-ngram-size", "-1"], "no_repeat_ngram_size"),
        (["--stop", ""], "stop string"),
        (["--stop"] * 0 + sum((["--stop", str(i)] for i in range(9)), []),
         "stop strings"),
        (["--max-new-tokens", "3", "--max-length", "9"], "max_length"),
        (["--num-beams", "0"], "num_beams"),
        (["--num-beams", "2", "--num-return-sequences", "3"],
         "num_return_sequences"),
        (["--num-beams", "2", "--temperature", "0.5"], "temperature"),
        (["--num-beams", "2", "--stream"], "--stream"),
    ],
)  # fmt: skip
def test_generate_bad_controls_exit_2(model_dir, capsys, flags, name):
    argv = ["generate", model_dir, "--prompt", "a", "--no-xla", *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert name in err and len(err.strip().splitlines()) == 1


def test_generate_controls_and_samples(model_dir, capsys):
    lm = CausalLM.from_preset(model_dir)
    kwargs = dict(temperature=2.0, seed=3, repetition_penalty=1.3)
    expected = lm.generate(
        "ab", 6, num_return_sequences=2, jit_compile=False, **kwargs
    )
    argv = ["generate", model_dir, "--prompt", "ab", "--max-new-tokens", "6"]
    argv += ["--temperature", "2", "--seed", "3", "--no-xla"]
    argv += ["--repetition-penalty", "1.3", "--num-return-sequences", "2"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out == f"--- 1.1: ab\n{expected[0]}\n--- 1.2: ab\n{expected[1]}\n"


def test_generate_beam_search(model_dir, capsys):
    expected = CausalLM.from_preset(model_dir).generate(
        "ab", 6, num_beams=3, num_return_sequences=2, length_penalty=0.6,
        early_stopping=True, jit_compile=False,
    )  # fmt: skip
    argv = ["generate", model_dir, "--prompt", "ab", "--max-new-tokens", "6"]
    argv += ["--num-beams", "3", "--num-return-sequences", "2", "--no-xla"]
    argv += ["--length-penalty", "0.6", "--early-stopping"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out == f"--- 1.1: ab\n{expected[0]}\n--- 1.2: ab\n{expected[1]}\n"


def test_export_writes_numbered_versions_and_refuses_overwrite(
    model_dir, tmp_path, capsys
):
    base = str(tmp_path / "serving")
    assert cli.main(["export", model_dir, "--out", base]) == 0
    assert cli.main(["export", model_dir, "--out", base]) == 0
    assert export.existing_versions(base) == [1, 2]
    assert f"exported: {os.path.join(base, '2')}" in capsys.readouterr().out
    assert cli.main(["export", model_dir, "--out", base, "--version", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert export.existing_versions(base) == [1, 2]


def test_quickstart_trains_exports_and_serves(tmp_path, capsys):
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog"]
    paragraphs = [" ".join(rng.choices(words, k=12)) + "\n" for _ in range(400)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(paragraphs))
    out = tmp_path / "qs"
    argv = ["quickstart", "--data", str(corpus), "--out", str(out)]
    argv += ["--preset", "tiny", "--steps", "4", "--max-new-tokens", "4"]
    argv += ["--vocabulary-size", "280"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[4/4] served" in printed
    assert model_dir_lib.is_model_dir(out / "model")
    assert export.existing_versions(str(out / "serving")) == [1]
    served = printed.split("[4/4]")[1].splitlines()[1:4]
    assert all(line.startswith("  ") and " -> " in line for line in served)
    # The prompts are the first words of held-out lines of the corpus.
    prompts = [ast.literal_eval(s.split(" -> ")[0].strip()) for s in served]
    assert prompts == quickstart.corpus_prompts([str(corpus)])
    assert all(len(p.split()) == 3 for p in prompts)


def test_generate_refuses_a_prompt_that_is_not_utf8(model_dir, capsys):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # as argv gives it
    assert cli.main(["generate", model_dir, "--prompt", bad]) == 2
    err = capsys.readouterr().err
    assert "prompt 1 is not valid UTF-8" in err
    assert "caf\\xe9" in err


def test_generate_multi_token_stop_string(model_dir, capsys):
    lm = CausalLM.from_preset(model_dir)
    expected = lm.generate("a", 8, stop=["king"], jit_compile=False)
    argv = ["generate", model_dir, "--prompt", "a", "--stop", "king"]
    assert cli.main(argv + ["--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected + "\n"
