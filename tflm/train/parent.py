"""The model a run starts from (`init_from`): a model directory or a
checkpoint directory `tflm.importers` reads, read and never modified.

A checkpoint (Hugging Face GPT-2, Llama, Qwen2 or Mistral, or a keras-hub
GPT-2 preset) is imported into a temporary model directory for the run. The
new model directory records its parent in `config.json["parent"]`: the
path, its kind and its fingerprint (a SHA-256 of the model's own files; see
`tflm.models.model_dir.fingerprint_record`), so that anyone can tell which
model it was tuned from, and a LoRA fine-tune that keeps its base there can
check it unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from tflm import errors
from tflm import importers
from tflm.models import model_dir

MODEL_DIR = "model_dir"


@dataclasses.dataclass(frozen=True)
class Parent:
    """A resolved `init_from`.

    Args:
        path: the absolute path the user named.
        kind: `"model_dir"`, `"huggingface"` or `"keras_hub"`.
        directory: a model directory holding it (for an import, temporary).
        config: that directory's `config.json`.
        fingerprint: `path`'s SHA-256
            (`tflm.models.model_dir.fingerprint_record`).
        files: what that fingerprint was made from (size, time and SHA-256
            of each file; empty for a checkpoint), so that loading a LoRA
            fine-tune reads again only the files that changed.
    """

    path: str
    kind: str
    directory: str
    config: dict[str, Any]
    fingerprint: str
    files: dict[str, list] = dataclasses.field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What the new model directory's `config.json` says of it."""
        record = {"path": self.path, "kind": self.kind}
        record["sha256"] = self.fingerprint
        return {**record, "files": self.files} if self.files else record


@contextlib.contextmanager
def resolve(path: str) -> Iterator[Parent]:
    """The `Parent` at `path`, valid inside the `with` block.

    Raises:
        InputError: `path` does not exist, or is neither a complete model
            directory (weights and tokenizer) nor an importable checkpoint.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise errors.InputError(
            f"The parent model {path} does not exist (or is not a "
            "directory). Name a model directory or a checkpoint directory "
            "(Hugging Face GPT-2, Llama, Qwen2, Mistral; keras-hub GPT-2)."
        )
    if model_dir.is_model_dir(path):
        # Missing weights or tokenizer: one line naming the file.
        config = model_dir.validate(path)
        found = model_dir.fingerprint_record(path)
        yield Parent(
            path, MODEL_DIR, path, config, found["sha256"], found["files"]
        )
        return
    kind = _checkpoint_kind(path)
    temp = tempfile.mkdtemp(prefix="tflm-parent-")
    try:
        imported = os.path.join(temp, "model")
        importers.import_checkpoint(path, imported)
        config = model_dir.read_config(imported)
        yield Parent(path, kind, imported, config, model_dir.fingerprint(path))
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _checkpoint_kind(path: str) -> str:
    try:
        return importers.detect_format(path)
    except ValueError as err:
        raise errors.InputError(
            f"{path} is neither a tflm model directory ({err}) nor an "
            "importable checkpoint. Name a directory written by tflm "
            "train/finetune/import, or a Hugging Face (GPT-2, Llama, Qwen2, "
            "Mistral) or keras-hub GPT-2 checkpoint directory."
        ) from None
