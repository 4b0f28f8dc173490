"""Typed run configuration: TOML in, validated dataclasses out.

Every mistake a user can make in a config (unknown key, wrong type, impossible value, a
personalisation id that is not a feature) is reported here, by key, before any data is read.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ppnet.errors import PPNetError


@dataclass(frozen=True)
class Feature:
    """One raw input column and how it becomes a model input.

    kind: ``vocab`` (lookup in a vocabulary built from the training data, rare values below
    ``min_count`` share the OOV buckets), ``hash`` (``bins`` hash buckets, no vocabulary pass)
    or ``numeric`` (optional sign-preserving log1p, then standardised with training mean/std;
    nulls, NaN and Inf become the mean, i.e. 0 after standardisation).
    """

    name: str
    kind: Literal["vocab", "hash", "numeric"] = "vocab"
    dim: int = 16
    min_count: int = 1
    num_oov: int = 1
    bins: int = 0
    log1p: bool = False


@dataclass(frozen=True)
class Task:
    """One objective: a 0/1 label column (``name``), its loss ``weight`` and an optional ``mask``.

    ``mask`` names a 0/1 column: the task's loss and metrics count only the rows where it is 1
    (e.g. a conversion task that only exists after a click). ``builds_on`` names an earlier task
    whose logit, under ``stop_gradient``, this task's logit adds a learned multiple of (from 0):
    for a task whose positives are nearly all the other's (a long view is a click).
    ``hidden_units`` sizes this task's tower when it should differ from ``model.hidden_units``
    (empty: the model's): a rare task has fewer positives to fit than the first task.
    """

    name: str
    weight: float = 1.0
    mask: str = ""
    builds_on: str = ""
    hidden_units: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DataConfig:
    """Where the label is, how to split a single log into train/validation, and the shuffle.

    ``label`` is the single-task shorthand: with ``[[tasks]]`` it is the first task's label.
    ``valid_last = 0`` holds nothing out (without ``--valid``): a daily continuation's one pass,
    which has no epoch to choose, trains on every row and keeps its last epoch.
    """

    label: str = "is_click"
    user_column: str = "user_id"
    split_column: str = "date"
    valid_last: int = 1
    shuffle_buffer: int = 131072


@dataclass(frozen=True)
class ModelConfig:
    """The tower, the gates and their regularisation (see docs/configuration.md)."""

    name: Literal["ppnet", "pepnet", "dnn", "mmoe"] = "ppnet"
    personal_ids: list[str] = field(default_factory=lambda: ["user_id", "video_id", "author_id"])
    domain_features: list[str] = field(default_factory=list)  # EPNet's domain (pepnet), e.g. ["tab"]
    gate_stop_gradient: Literal["shared", "ids"] = "shared"
    personal_ids_in_tower: bool = True
    hidden_units: list[int] = field(default_factory=lambda: [512, 256, 128])
    gate_hidden: int = 64
    dropout: float = 0.0
    batch_norm: bool = False
    embedding_l2: float = 0.0
    experts: int = 4  # mmoe: shared experts, each a ReLU MLP of hidden_units[:-1]
    # Who trains the shared parts (embeddings, EPNet, the ids' gate tables) with several tasks:
    # every task ("joint"), or the first alone ("primary"; the others read them under stop_gradient,
    # their gates beside id tables of their own). See docs/multitask.md.
    task_sharing: Literal["joint", "primary"] = "joint"
    # Under "primary": categorical features each later task also embeds in tables of its own, which
    # its tower reads beside the shared input (item and context fields order one user's candidates).
    task_features: list[str] = field(default_factory=list)

    @property
    def gated(self) -> bool:
        """PPNet's gates personalise the towers (``ppnet`` and ``pepnet``; not ``dnn`` or ``mmoe``)."""
        return self.name in ("ppnet", "pepnet")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, early stopping and crash backups."""

    batch_size: int = 1024
    epochs: int = 3
    seed: int = 42
    optimizer: Literal["adam", "lazy_adam", "adagrad", "sgd"] = "adam"
    learning_rate: float = 1e-3
    early_stopping_patience: int = 1
    backup_every_steps: int = 500
    memory_limit_gib: float = 0.0  # the weights with their optimizer slots must fit; 0: this machine's memory
    select_by: str = "mean"  # the best epoch: "mean" validation AUC over tasks, or one task's name
    # The towers' and gates' compute dtype; "auto": bfloat16 where the hardware has it (ppnet.precision)
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"
    # The exported towers' and gates' compute dtype: float32, or bfloat16 for large requests on
    # hardware with it (docs/serving.md); the embeddings, logits and outputs stay float32
    export_precision: Literal["float32", "mixed_bfloat16"] = "float32"
    # After the best epoch is chosen, one more pass from its checkpoint over the validation rows, so
    # the export has seen the newest day (its metrics.json scores are the chosen epoch's, before it)
    refit: bool = False
    # Threads one TensorFlow op may use; 0: TensorFlow's default (one per core). 1 runs each op on
    # one core and independent ops (the towers, their gates) side by side (ppnet.train.use_threads)
    intra_op_threads: int = 0
    # Training steps per call of Keras' compiled train function: the same updates with fewer round
    # trips through Python between steps (ppnet.model.build_model); callbacks then see every call's
    # last step, so crash backups and NaN checks come at whole calls
    steps_per_execution: int = 8


@dataclass(frozen=True)
class Config:
    """A whole run: features, data split, model and training."""

    features: list[Feature]
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tasks: list[Task] = field(default_factory=list)  # filled from data.label when not given

    @property
    def task_names(self) -> list[str]:
        """The tasks' label columns; the first is the primary task (``probability``, top-level metrics)."""
        return [task.name for task in self.tasks]

    @property
    def target_columns(self) -> list[str]:
        """Every column the loss reads: the labels, then the masks (see ``target_columns``)."""
        return target_columns(self.tasks)

    def tower_units(self, task: Task) -> list[int]:
        """The hidden layers' widths of ``task``'s tower: its own ``hidden_units``, or the model's."""
        return task.hidden_units or self.model.hidden_units

    def feature(self, name: str) -> Feature:
        """The feature called ``name`` (validated to exist)."""
        return next(f for f in self.features if f.name == name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def target_columns(tasks: list[Task]) -> list[str]:
    """Every column the tasks' losses and metrics read: the labels, then the masks (each once)."""
    return list(dict.fromkeys([*(task.name for task in tasks), *(task.mask for task in tasks if task.mask)]))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config, apply ``KEY=VALUE`` overrides, validate."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PPNetError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PPNetError(f"{path}: cannot read the config file ({err})") from None
    except tomllib.TOMLDecodeError as err:
        raise PPNetError(f"{path}: not valid TOML: {err}") from None
    changed = copy.deepcopy(raw)
    for item in overrides:
        apply_override(changed, item)
    try:
        return config_from_dict(changed, source=str(path))
    except PPNetError:
        if not overrides or not _valid(raw):
            raise
    # The file alone is valid, so an override made it invalid: the error names the overrides.
    return config_from_dict(changed, source=f"--set {' '.join(overrides)}")


def _valid(raw: dict[str, Any]) -> bool:
    try:
        config_from_dict(copy.deepcopy(raw))
    except PPNetError:
        return False
    return True


def as_written_now(raw: Any) -> Any:
    """A config an earlier run saved, as this version writes it: keys added since take their
    defaults, so resuming a run or a replay across an upgrade compares only what was set. One
    that no longer loads is returned as it is (and then differs)."""
    try:
        return config_from_dict(raw).to_dict() if isinstance(raw, dict) else raw
    except PPNetError:
        return raw


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a ``Config`` from plain data (TOML table or saved JSON)."""
    raw = dict(raw)
    features = raw.pop("features", None)
    if not isinstance(features, list) or not features:
        raise PPNetError(f"{source}: 'features' must be a non-empty list of [[features]] tables")
    tasks = raw.pop("tasks", None)
    parsed = {
        "features": [_build(Feature, f, f"{source}: features[{i}]") for i, f in enumerate(features)],
        **{key: _build(cls, raw.pop(key, {}), f"{source}: [{key}]") for key, cls in _SECTIONS.items()},
    }
    if raw:
        raise PPNetError(f"{source}: unknown key(s) {sorted(raw)}; expected features, tasks, {', '.join(_SECTIONS)}")
    parsed["tasks"] = _tasks(tasks, parsed["data"], source)
    parsed["data"] = dataclasses.replace(parsed["data"], label=parsed["tasks"][0].name)
    config = Config(**parsed)
    _check(config, source)
    return config


def save_config(config: Config, path: Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=2))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``--set`` override such as ``model.name=dnn``, ``features.user_id.dim=32`` or
    ``tasks.is_like.weight=3``.

    The value is parsed as a TOML value (numbers, booleans, lists), falling back to a string.
    """
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise PPNetError(f"--set {item!r}: expected KEY=VALUE, e.g. model.name=dnn")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = key.split(".")
    if parts[0] in ("features", "tasks"):  # lists of tables, addressed by name
        kind = parts[0][:-1]
        if len(parts) != 3:
            raise PPNetError(f"--set {item!r}: {kind} overrides look like {parts[0]}.NAME.KEY=VALUE")
        matches = [table for table in raw.get(parts[0], []) if table.get("name") == parts[1]]
        if not matches:
            raise PPNetError(f"--set {item!r}: no {kind} named {parts[1]!r} in the config's [[{parts[0]}]]")
        matches[0][parts[2]] = value
        return
    if len(parts) != 2:
        raise PPNetError(f"--set {item!r}: expected SECTION.KEY=VALUE with a section in {list(_SECTIONS)}")
    raw.setdefault(parts[0], {})[parts[1]] = value


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # it names the export's outputs and the metrics
# A feature names the export's inputs and TensorFlow ops: TensorFlow's op-name characters, no "/".
FEATURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def _tasks(tables: Any, data: DataConfig, source: str) -> list[Task]:
    """The ``[[tasks]]`` list, or the single task ``data.label`` (configs and runs from before tasks)."""
    if tables is None:
        return [Task(data.label)]
    if not isinstance(tables, list) or not tables:
        raise PPNetError(f"{source}: 'tasks' must be a non-empty list of [[tasks]] tables")
    tasks = [_build(Task, t, f"{source}: tasks[{i}]") for i, t in enumerate(tables)]
    if data.label not in (DataConfig.label, tasks[0].name):
        raise PPNetError(
            f"{source}: data.label = {data.label!r} but the first task is {tasks[0].name!r}; "
            "with [[tasks]] leave data.label out"
        )
    return tasks


def _build(cls: type, table: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``table``, rejecting unknown keys and wrong types."""
    if not isinstance(table, dict):
        raise PPNetError(f"{where}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = set(table) - set(hints)
    if unknown:
        raise PPNetError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(hints)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in table
    ]
    if missing:
        raise PPNetError(f"{where}: missing required key(s) {missing}")
    values = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in table.items()}
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise PPNetError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise PPNetError(f"{where}: expected a list of {item_hint.__name__}, got {value!r}")
        return [_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise PPNetError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _check_domain(config: Config, source: str) -> None:
    """EPNet's domain features: declared, categorical, not ids, and only for ``pepnet``."""
    model = config.model
    if model.name != "pepnet":
        if model.domain_features:
            raise PPNetError(f'{source}: model.domain_features is for model.name = "pepnet", not {model.name!r}')
        return
    if not model.domain_features:
        raise PPNetError(f'{source}: model.name = "pepnet" needs model.domain_features (e.g. ["tab"])')
    if model.gate_stop_gradient != "shared":
        raise PPNetError(f'{source}: model.name = "pepnet" needs gate_stop_gradient = "shared"')
    names = [f.name for f in config.features]
    for name in model.domain_features:
        if name not in names:
            raise PPNetError(f"{source}: model.domain_features names {name!r}, which is not a declared feature")
        if config.feature(name).kind == "numeric":
            raise PPNetError(f"{source}: model.domain_features: {name!r} is numeric; domains must be vocab or hash")
        if name in model.personal_ids:
            raise PPNetError(f"{source}: model.domain_features: {name!r} is also a personal id")
    if len(set(model.domain_features)) != len(model.domain_features):
        raise PPNetError(f"{source}: model.domain_features lists a feature twice")


def _check_task_features(config: Config, source: str) -> None:
    """``model.task_features``: declared, categorical, listed once, and only under primary sharing."""
    wanted = config.model.task_features
    if wanted and config.model.task_sharing != "primary":
        raise PPNetError(f'{source}: model.task_features needs model.task_sharing = "primary"')
    names = [f.name for f in config.features]
    for name in wanted:
        if name not in names:
            raise PPNetError(f"{source}: model.task_features names {name!r}, which is not a declared feature")
        if config.feature(name).kind == "numeric":
            raise PPNetError(
                f"{source}: model.task_features: {name!r} is numeric; a task's own tables embed vocab or hash features"
            )
    if len(set(wanted)) != len(wanted):
        raise PPNetError(f"{source}: model.task_features lists a feature twice")


def _check_tasks(config: Config, source: str) -> None:
    """Task names usable as output names, unique, not features; masks and the selection rule valid."""
    names = [f.name for f in config.features]
    tasks = config.task_names
    for i, task in enumerate(config.tasks):
        where = f"{source}: tasks[{i}]" if len(tasks) > 1 else f"{source}: the label"
        if task.name in names:
            raise PPNetError(f"{where} {task.name!r} cannot also be a feature")
        if len(tasks) > 1 and not TASK_NAME.fullmatch(task.name):
            raise PPNetError(f"{where}.name {task.name!r}: use letters, digits and _ (it names the export's outputs)")
        if task.weight <= 0:
            raise PPNetError(f"{where}.weight must be > 0, got {task.weight}")
        if task.mask in names:
            raise PPNetError(
                f"{where}.mask {task.mask!r} is a feature; a mask is a 0/1 column (another task's label may be)"
            )
        if task.mask == task.name:
            raise PPNetError(f"{where}.mask is the task's own label")
        if task.hidden_units and (min(task.hidden_units) < 1 or config.model.name == "mmoe"):
            raise PPNetError(
                f"{where}.hidden_units: expected positive ints, and a model with a tower per task "
                f"(not mmoe, whose towers are split from model.hidden_units), got {task.hidden_units} "
                f"with {config.model.name!r}"
            )
        if task.builds_on and task.builds_on not in tasks[:i]:
            raise PPNetError(
                f"{where}.builds_on {task.builds_on!r}: expected an earlier task's name, one of {tasks[:i]}"
            )
    dupes = sorted({n for n in tasks if tasks.count(n) > 1})
    if dupes:
        raise PPNetError(f"{source}: task(s) {dupes} listed more than once in [[tasks]]")
    sharing = config.model.task_sharing
    if sharing == "primary" and (len(tasks) < 2 or not config.model.gated):
        raise PPNetError(
            f'{source}: model.task_sharing = "primary" needs two or more [[tasks]] and a gated model '
            f"(ppnet or pepnet: later tasks personalise through their gates), got {len(tasks)} task(s) "
            f"and {config.model.name!r}"
        )
    if sharing == "primary" and config.model.gate_stop_gradient != "shared":
        raise PPNetError(
            f'{source}: model.task_sharing = "primary" needs gate_stop_gradient = "shared" '
            "(each later task's gates then read id tables of their own)"
        )
    _check_task_features(config, source)
    if config.train.select_by not in ("mean", *tasks):
        raise PPNetError(
            f'{source}: train.select_by must be "mean" or a task name {tasks}, got {config.train.select_by!r}'
        )


def _check(config: Config, source: str) -> None:
    """Cross-field rules that types alone cannot express."""
    names = [f.name for f in config.features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PPNetError(f"{source}: feature(s) {dupes} declared more than once")
    for f in config.features:
        if not FEATURE_NAME.fullmatch(f.name):
            raise PPNetError(
                f"{source}: feature name {f.name!r}: TensorFlow names the export's inputs after it; use ASCII "
                "letters, digits, _ . - (not first: _ . -); rename the column"
            )
        if f.dim < 1:
            raise PPNetError(f"{source}: features.{f.name}.dim must be >= 1, got {f.dim}")
        if f.kind == "hash" and f.bins < 1:
            raise PPNetError(f"{source}: features.{f.name} is a hash feature; set bins >= 1")
        if f.kind == "vocab" and (f.min_count < 1 or f.num_oov < 1):
            raise PPNetError(f"{source}: features.{f.name}: min_count and num_oov must be >= 1")
    _check_tasks(config, source)
    model = config.model
    threads = config.train.intra_op_threads
    if threads < 0:
        raise PPNetError(f"{source}: train.intra_op_threads must be >= 0 (0: TensorFlow's default), got {threads}")
    if not model.hidden_units or min(model.hidden_units) < 1:
        raise PPNetError(f"{source}: model.hidden_units must be a non-empty list of positive ints")
    for pid in model.personal_ids:
        if pid not in names:
            raise PPNetError(f"{source}: model.personal_ids names {pid!r}, which is not a declared feature")
        if config.feature(pid).kind == "numeric":
            raise PPNetError(f"{source}: model.personal_ids: {pid!r} is numeric; ids must be vocab or hash")
    gated = model.gated
    if gated and not model.personal_ids:
        raise PPNetError(f"{source}: model.personal_ids is empty; PPNet needs at least one id for its gates")
    _check_domain(config, source)
    if gated and not model.personal_ids_in_tower:
        if model.gate_stop_gradient != "shared":
            raise PPNetError(
                f'{source}: model.personal_ids_in_tower = false needs gate_stop_gradient = "shared" '
                '(the ids then have gate-only tables; in "ids" mode the gates read the tower\'s)'
            )
        if not [f for f in config.features if f.name not in model.personal_ids]:
            raise PPNetError(
                f"{source}: model.personal_ids_in_tower = false leaves the tower no input; "
                "declare features besides the personalisation ids"
            )
    if model.name == "mmoe" and (model.experts < 1 or len(model.hidden_units) < 2):
        raise PPNetError(f"{source}: mmoe needs model.experts >= 1 and at least two model.hidden_units")
    if model.gate_hidden < 1:
        raise PPNetError(f"{source}: model.gate_hidden must be >= 1, got {model.gate_hidden}")
    if model.embedding_l2 < 0:
        raise PPNetError(f"{source}: model.embedding_l2 must be >= 0, got {model.embedding_l2}")
    if config.data.shuffle_buffer < 0:
        raise PPNetError(f"{source}: data.shuffle_buffer must be >= 0, got {config.data.shuffle_buffer}")
    if not 0.0 <= model.dropout < 1.0:
        raise PPNetError(f"{source}: model.dropout must be in [0, 1), got {model.dropout}")
    train = config.train
    for key in ("batch_size", "epochs", "steps_per_execution"):
        if getattr(train, key) < 1:
            raise PPNetError(f"{source}: train.{key} must be >= 1")
    if train.learning_rate <= 0:
        raise PPNetError(f"{source}: train.learning_rate must be > 0")
    for key in ("early_stopping_patience", "backup_every_steps"):
        if getattr(train, key) < 0:
            raise PPNetError(f"{source}: train.{key} must be >= 0, got {getattr(train, key)}")
    if train.memory_limit_gib < 0:
        raise PPNetError(f"{source}: train.memory_limit_gib must be >= 0 (0: this machine's memory)")
    if not 0 <= train.seed < 2**32:  # TensorFlow's seed range
        raise PPNetError(f"{source}: train.seed must be in [0, 2**32), got {train.seed}")
    if config.data.valid_last < 0:
        raise PPNetError(f"{source}: data.valid_last must be >= 0 (0: no validation rows)")
