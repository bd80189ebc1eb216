"""The `tflm` front door: the public names, loaded lazily; import layers."""

import ast
import os
import subprocess
import sys

import pytest

import tflm

ROOT = os.path.dirname(tflm.__file__)


def test_import_tflm_loads_no_tensorflow():
    code = "import sys, tflm; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert result.stdout.strip() == "False", result.stderr


def test_public_names_resolve():
    from tflm.models import causal_lm
    from tflm.train import fit

    assert tflm.CausalLM is causal_lm.CausalLM
    assert tflm.train.train is fit.train
    assert callable(tflm.export.export)
    assert callable(tflm.make_dataset)
    assert issubclass(tflm.SentencePieceTokenizer, tflm.Tokenizer)
    assert issubclass(tflm.InputError, ValueError)
    assert set(tflm.__all__) <= set(dir(tflm))
    with pytest.raises(AttributeError, match="no_such"):
        tflm.no_such  # noqa: B018


def _tflm_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module + "." + a.name for a in node.names]
            yield from (n for n in names if n.startswith("tflm."))
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("tflm"))


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("models", ("tflm.train", "tflm.export", "tflm.importers")),
        ("tokenizers", ("tflm.models", "tflm.train", "tflm.export")),
        ("atomic", ("tflm.models", "tflm.tokenizers", "tflm.train")),
    ],
)
def test_nothing_imports_upward(package, forbidden):
    folder = os.path.join(ROOT, package)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            for imported in _tflm_imports(os.path.join(folder, name)):
                assert not imported.startswith(forbidden), (name, imported)
