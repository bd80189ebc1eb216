"""Training state inside a model directory: what resuming needs.

    MODEL_DIR/train/state.json     step, total steps, the TrainConfig used
    MODEL_DIR/train/optimizer.npz  the optimizer's variables (moments, step)
    MODEL_DIR/train/rng.npz        dropout seed states
    MODEL_DIR/logs/metrics.jsonl   one JSON line per step and validation

The weights are the model directory's own `model.weights.h5`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile
from typing import Any

import numpy as np

from tflm import errors
from tflm.models import model_dir

logger = logging.getLogger(__name__)

STATE_FILE = f"{model_dir.TRAIN_DIR}/state.json"
OPTIMIZER_FILE = f"{model_dir.TRAIN_DIR}/optimizer.npz"
RNG_FILE = f"{model_dir.TRAIN_DIR}/rng.npz"
LOG_DIR = "logs"
METRICS_FILE = f"{LOG_DIR}/metrics.jsonl"
# Backbone settings that may differ on resume: the precision is a run
# setting, and the name is not part of the architecture.
_IGNORED_KEYS = ("dtype", "name")


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Where a run stands.

    Args:
        step: optimizer updates done (and global batches consumed).
        total_steps: updates the run was asked for.
        config: the `TrainConfig.to_dict()` the run was started with.
        progress: more of where it stands, such as the best validation
            (see `tflm.train.best.BestKeeper.state`); `stopped` when it
            stopped early.
    """

    step: int
    total_steps: int
    config: dict[str, Any]
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps or bool(
            self.progress.get("stopped")
        )


def read(directory: str) -> TrainState:
    """Reads the training state of a model directory.

    Raises:
        InputError: the directory holds a model but no training state.
    """
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        raise errors.InputError(
            f"{directory} holds a model but no training state ({path} is "
            "missing), so there is no run to resume. Name a new --out."
        )
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        return TrainState(
            int(state["step"]),
            int(state["total_steps"]),
            state["config"],
            dict(state.get("progress", {})),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise errors.InputError(f"{path} is corrupt: {err}") from None


def extra_files(state: TrainState, optimizer, model) -> dict[str, Any]:
    """The `extra` argument of `model_dir.save` for this state."""
    text = json.dumps(dataclasses.asdict(state), indent=2)
    return {
        STATE_FILE: text,
        OPTIMIZER_FILE: lambda path: save_optimizer(optimizer, path),
        RNG_FILE: lambda path: _save_arrays(path, _rng_variables(model)),
    }


def _rng_variables(model) -> list:
    """The dropout seed states, which `save_weights` leaves out."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _save_arrays(path: str, variables) -> None:
    with open(path, "wb") as f:
        np.savez(f, *[v.numpy() for v in variables])


def _load_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file; never unpickles (the file may come
    from anyone). InputError naming the file if it is missing or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise errors.InputError(
            f"{path} is missing or corrupt ({err}). The training state "
            "cannot be resumed from it: restore the folder from a copy, or "
            "train into a new --out."
        ) from None


def restore_rng(model, directory: str) -> None:
    """Restores the dropout seed states, so that masks continue as before."""
    path = os.path.join(directory, RNG_FILE)
    variables = _rng_variables(model)
    data = _load_arrays(path)
    if sorted(data) != sorted(f"arr_{i}" for i in range(len(variables))):
        raise errors.InputError(
            f"{path} holds {len(data)} seed states; the model has "
            f"{len(variables)}. Train into a new --out."
        )
    for i, variable in enumerate(variables):
        variable.assign(data[f"arr_{i}"])


def save_optimizer(optimizer, path: str) -> None:
    """Writes every optimizer variable to an `.npz` file."""
    store: dict[str, np.ndarray] = {}
    optimizer.save_own_variables(store)
    with open(path, "wb") as f:
        np.savez(f, **store)


def restore_optimizer(optimizer, directory: str) -> None:
    """Loads the variables `save_optimizer` wrote into a built optimizer."""
    path = os.path.join(directory, OPTIMIZER_FILE)
    store = _load_arrays(path)
    expected = len(optimizer.variables)
    if len(store) != expected:
        raise errors.InputError(
            f"{path} holds {len(store)} optimizer variables; this run's "
            f"optimizer has {expected}. It was written by an incompatible "
            "configuration (precision or optimizer changed?)."
        )
    optimizer.load_own_variables(store)


def check_compatible(
    path: str, saved: dict[str, Any], wanted: dict[str, Any]
) -> None:
    """Raises when a backbone config differs from the saved one.

    Args:
        path: the saved `config.json`, for the message.
        saved: its `backbone` entry.
        wanted: this run's backbone arguments; only the keys given are
            compared, and never `dtype` or `name`.
    """
    changed = sorted(
        k
        for k, v in wanted.items()
        if k not in _IGNORED_KEYS and saved.get(k) != v
    )
    if changed:
        details = ", ".join(
            f"{k}: saved {saved.get(k)!r}, now {wanted[k]!r}" for k in changed
        )
        raise errors.InputError(
            f"{path} describes another architecture ({details}). Resume "
            "with the settings the model was trained with, or name a new "
            "--out."
        )


def report_changes(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Logs the training settings that differ from the saved run's."""
    changed = {
        k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v
    }
    for key, (old, new) in sorted(changed.items()):
        logger.warning("Resuming with %s=%r (the run used %r).", key, new, old)


def truncate_log(directory: str, step: int) -> None:
    """Drops log lines after `step` (written after the last checkpoint)."""
    path = os.path.join(directory, METRICS_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # A line cut by a crash.
    temp = f"{path}.tmp"
    with open(temp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(temp, path)


def read_log(directory: str) -> list[dict[str, Any]]:
    """The records of `logs/metrics.jsonl` (steps and validations)."""
    path = os.path.join(directory, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
