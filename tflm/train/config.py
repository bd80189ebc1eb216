"""`TrainConfig`: every training option, and the CLI flags made from it."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from typing import Any

from tflm import errors
from tflm.models import presets
from tflm.train import validation

# This module imports no TensorFlow, so that `tflm --help` stays fast.
STRATEGIES = (
    "auto",
    "default",
    "one_device",
    "mirrored",
    "multi_worker",
    "tpu",
)
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
TEXT_FORMATS = ("document", "paragraph", "line")
JIT_CHOICES = ("auto", "on", "off")
DATA_FORMATS = ("text", "task")
LORA_TARGETS = ("query", "key", "value", "output", "mlp_in", "mlp_out")
# Which command shows a field as a flag (fields without a scope: both).
TRAIN_ONLY = "train"
FINETUNE_ONLY = "finetune"
# The peak learning rate from --init-from, where there is no preset's.
INIT_FROM_LEARNING_RATE = 3e-4


def _option(default, help: str, **metadata) -> Any:
    return dataclasses.field(
        default=default, metadata={"help": help, **metadata}
    )


def _required(help: str, **metadata) -> Any:
    return dataclasses.field(metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training options. Each field is also a `tflm train` flag.

    Args:
        data: text files, folders or globs (`.txt`, `.jsonl`).
        out: the model directory to write (and to resume from).
        preset: architecture, a name in `tflm.models.PRESETS`.
        (see each field's `help` metadata for the others.)
    """

    data: tuple[str, ...] = _required(
        "training text: files, folders or quoted globs (.txt, .jsonl), or a "
        "folder from `tflm data prepare` (for corpora above 256 MB)",
        metavar="PATH",
    )
    out: str = _required("model directory to write and resume", metavar="DIR")
    preset: str | None = _option(
        None,
        "architecture preset, e.g. tiny, nano-char (required unless "
        "--init-from names the model to start from)",
        scope=TRAIN_ONLY,
    )
    init_from: str | None = _option(
        None,
        "start from this model directory or checkpoint directory (Hugging "
        "Face GPT-2, Llama, Qwen2, Mistral; keras-hub GPT-2): its "
        "architecture, weights and tokenizer (never modified)",
        metavar="DIR",
        scope=TRAIN_ONLY,
    )
    data_format: str = _option(
        "text",
        "text: plain text to continue; task: .jsonl prompt/completion or "
        "chat examples, loss on the completions only",
        choices=DATA_FORMATS,
        scope=TRAIN_ONLY,
    )
    prompt_field: str = _option(
        "prompt", "prompt field of task examples", scope=FINETUNE_ONLY
    )
    completion_field: str = _option(
        "completion", "completion field of task examples", scope=FINETUNE_ONLY
    )
    lora_rank: int | None = _option(
        None,
        "train rank-R LoRA adapters only; the base stays frozen",
        metavar="R",
        scope=FINETUNE_ONLY,
    )
    lora_alpha: float | None = _option(
        None, "LoRA scale numerator (default: the rank)", scope=FINETUNE_ONLY
    )
    lora_targets: tuple[str, ...] = _option(
        ("query", "value"),
        f"projections given adapters, of: {', '.join(LORA_TARGETS)}",
        scope=FINETUNE_ONLY,
    )
    early_stopping_patience: int | None = _option(
        None,
        "stop after N validations without a lower validation loss; the "
        "best weights are the result either way",
        metavar="N",
    )
    tokenizer: str | None = _option(
        None,
        "'byte' (the default), a tokenizer directory, or 'sentencepiece:N' "
        "to train an N-id SentencePiece model on --data; prepared --data "
        "uses the tokenizer it was prepared with",
        metavar="SPEC",
        scope=TRAIN_ONLY,
    )
    data_service: str | None = _option(
        None,
        "grpc://HOST:PORT of a tf.data service dispatcher: its workers read "
        "the prepared --data (see the README)",
        metavar="ADDRESS",
        scope=TRAIN_ONLY,
    )
    validation_data: tuple[str, ...] = _option(
        (),
        "held-out text; default: a share of --data's documents",
        metavar="PATH",
    )
    validation_fraction: float = _option(
        0.1,
        "share of --data's text held out when no --validation-data is "
        "given: whole documents when there are many, else the tail of each "
        "(0: no validation)",
    )
    text_format: str = _option(
        "document",
        "what a document is in .txt files",
        choices=TEXT_FORMATS,
        scope=TRAIN_ONLY,
    )
    jsonl_field: str = _option(
        "text", "text field of .jsonl lines", scope=TRAIN_ONLY
    )
    steps: int | None = _option(None, "optimizer updates (default: 1 epoch)")
    epochs: float | None = _option(None, "passes over the training data")
    batch_size: int = _option(32, "global batch, in sequences")
    sequence_length: int | None = _option(
        None, "tokens per sequence (default: the preset's context)"
    )
    accumulation_steps: int = _option(
        1, "micro-batches per update (same update, less memory)"
    )
    learning_rate: float | None = _option(
        None,
        "peak learning rate (default: the preset's, measured on short runs "
        "for the small presets and GPT-3's for the large ones: see "
        "tflm.models.presets.LEARNING_RATES and docs/performance.md; "
        f"{INIT_FROM_LEARNING_RATE:g} from --init-from; a resumed run keeps "
        "its own)",
    )
    min_learning_rate: float | None = _option(
        None, "final learning rate (default: learning_rate / 10)"
    )
    warmup_steps: int | None = _option(
        None, "linear warm-up steps (default: 100, or a tenth of a shorter run)"
    )
    schedule: str = _option("cosine", "decay after warm-up", choices=SCHEDULES)
    weight_decay: float = _option(0.1, "AdamW weight decay")
    beta_1: float = _option(0.9, "AdamW beta 1")
    beta_2: float = _option(0.95, "AdamW beta 2")
    clip_norm: float | None = _option(1.0, "global gradient-norm clip (0: off)")
    dropout: float | None = _option(None, "dropout (default: the preset's)")
    precision: str = _option("float32", "dtype policy", choices=PRECISIONS)
    strategy: str = _option("auto", "distribution strategy", choices=STRATEGIES)
    checkpoint_every: int = _option(
        500, "steps between checkpoints (0: only at the end)"
    )
    validate_every: int = _option(
        500, "steps between validations (0: only at the end)"
    )
    eval_batches: int = _option(
        0,
        "validation batches per validation (0: the whole split; from "
        "prepared data, about 1M tokens drawn from all of it)",
    )
    seed: int = _option(0, "seed for initialization and data order")
    jit_compile: str = _option(
        "auto",
        "XLA (auto: on, except distributed or mixed_bfloat16 on a CPU)",
        choices=JIT_CHOICES,
    )
    log_every: int = _option(
        10,
        "steps between TensorBoard points, and between progress lines when "
        "the output is a file or a pipe (a terminal shows every step)",
    )

    def __post_init__(self):
        for name in ("data", "validation_data", "lora_targets"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        if not self.data:
            raise errors.InputError(
                "--data must name at least one file. Received: data=()."
            )
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            value = getattr(self, field.name)
            if choices and value not in choices:
                raise validation.fail(
                    field.name, value, f"one of {', '.join(choices)}"
                )
        validation.check_config(self, _optional_fields())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        config = dataclasses.asdict(self)
        config["data"] = list(self.data)
        config["validation_data"] = list(self.validation_data)
        config["lora_targets"] = list(self.lora_targets)
        return config


def default_learning_rate(preset: str | None) -> float:
    """The peak learning rate of a new run that names none: its preset's
    (`tflm.models.presets.LEARNING_RATES`), or `INIT_FROM_LEARNING_RATE`
    for a run that starts from a model (no preset)."""
    if preset is None:
        return INIT_FROM_LEARNING_RATE
    return presets.learning_rate(preset)


def resolve_learning_rate(
    config: TrainConfig, resumed: dict[str, Any] | None = None
) -> TrainConfig:
    """`config` with the peak learning rate its run uses.

    The rate given wins. Without one, a resumed run keeps the rate it was
    started with (the same schedule, even where the defaults changed
    since), and a new run takes `default_learning_rate`.

    Args:
        config: the run's settings, `learning_rate` `None` when none was
            given.
        resumed: the saved settings of the run `config` resumes
            (`TrainState.config`), or `None` for a new run.

    Raises:
        InputError: `min_learning_rate` is above the rate used.
    """
    if config.learning_rate is not None:
        return config
    rate = (resumed or {}).get("learning_rate")
    if rate is None:
        rate = default_learning_rate(config.preset)
    return dataclasses.replace(config, learning_rate=rate)


@functools.cache
def _optional_fields() -> frozenset[str]:
    """The fields whose type allows `None`."""
    hints = typing.get_type_hints(TrainConfig)
    return frozenset(
        name
        for name, hint in hints.items()
        if type(None) in typing.get_args(hint)
    )


def _base_type(hint) -> tuple[type, bool]:
    """(element type, is_tuple) of a field's type hint."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def fields_for(command: str) -> list[dataclasses.Field]:
    """The fields `tflm COMMAND` (`train` or `finetune`) has flags for."""
    return [
        field
        for field in dataclasses.fields(TrainConfig)
        if field.metadata.get("scope", command) == command
    ]


def add_arguments(
    parser: argparse.ArgumentParser,
    command: str = TRAIN_ONLY,
    skip: tuple[str, ...] = (),
) -> None:
    """Adds one `--flag` per `TrainConfig` field of `command` to `parser`.

    Args:
        parser: the subcommand's parser.
        command: `"train"` or `"finetune"` (see `fields_for`).
        skip: fields the command sets another way.
    """
    hints = typing.get_type_hints(TrainConfig)
    for field in fields_for(command):
        if field.name in skip:
            continue
        kind, many = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        kwargs: dict[str, Any] = {
            "dest": field.name,
            "help": field.metadata["help"],
        }
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        else:
            default = {int: "N", float: "X", str: "NAME"}[kind]
            kwargs["metavar"] = field.metadata.get("metavar", default)
        if many:
            kwargs["nargs"] = "+"
        kwargs["type"] = kind
        if field.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = field.default
            if field.default not in (None, ()):
                kwargs["help"] += f" (default: {field.default})"
        parser.add_argument(flag, **kwargs)


def from_namespace(args: argparse.Namespace, **values) -> TrainConfig:
    """Builds a `TrainConfig` from parsed `add_arguments` flags, plus
    `values` for the fields that have no flag."""
    names = [field.name for field in dataclasses.fields(TrainConfig)]
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return TrainConfig(**{**given, **values})
