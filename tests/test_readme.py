"""The README's Python snippets run as written, in order, in an empty
folder; and its set-up commands are the two the project promises."""

import os
import re

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _blocks(language: str) -> list[str]:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_setup_is_the_two_promised_commands():
    setup = _blocks("bash")[:2]
    assert [block.strip() for block in setup] == [
        "pip install -e . && tflm quickstart",
        'pip install -e ".[test]" && pytest',
    ]


def test_python_tour_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, README, "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert os.path.isfile(tmp_path / "serving/docs/1/saved_model.pb")
    assert os.path.isfile(tmp_path / "models/docs/config.json")
    assert namespace["model"].tokenizer is not None
    served = namespace["answer"]["text"][0].numpy().decode()
    in_process = namespace["model"].generate(
        "The for statement", max_new_tokens=24
    )
    assert served == in_process
    assert served in printed


def test_no_placeholder_is_left():
    with open(README, encoding="utf-8") as f:
        assert "PERFORMANCE_TABLE" not in f.read()
