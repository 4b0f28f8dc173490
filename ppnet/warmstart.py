"""Continue a finished run on new data (``ppnet train --init-from RUN_DIR``), as a ranker retrains
every day from yesterday's model instead of from scratch.

The new run starts from the parent's best weights and, for Adam (``adam``, ``lazy_adam``), its
optimizer state (moments and step count), so training goes on where it stopped. Vocabularies grow
(``compute_stats`` with the parent's statistics): a known id keeps its table row and its moments,
an id first seen in the new data gets a new row initialised as fresh rows are. The config must
build the same network: features (name, kind, dim, buckets), model shape and task names; training
settings (learning rate, epochs, ...), data settings, dropout and loss weights may change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

import ppnet
from ppnet.config import Config, config_from_dict
from ppnet.errors import PPNetError
from ppnet.features import table_size
from ppnet.model import RankingModel, logical_weights, shards
from ppnet.rundir import BEST_WEIGHTS, changed_keys, read_json
from ppnet.stats import Stats
from ppnet.tf_private import adam_moment_keys, adam_moments, checkpoint_keys

log = logging.getLogger(__name__)

# Model keys that may differ from the parent's: they change how the network trains, not its
# variables. (``data`` and ``train`` may differ too, and a feature's ``min_count``.)
FREE_MODEL_KEYS = ("dropout", "embedding_l2")
ADAM_FAMILY = ("adam", "lazy_adam")


@dataclass(frozen=True)
class Parent:
    """A finished run to continue: its directory, config and statistics."""

    run_dir: Path
    config: Config
    stats: Stats

    @classmethod
    def load(cls, run_dir: str | Path) -> Parent:
        run_dir = Path(run_dir)
        if not (run_dir / "metrics.json").is_file():
            raise PPNetError(f"--init-from {run_dir}: not a finished run directory (no metrics.json)")
        if not (run_dir / f"{BEST_WEIGHTS}.index").is_file():  # checked before the new run writes anything
            raise PPNetError(f"--init-from {run_dir}: no best checkpoint in {BEST_WEIGHTS}")
        config_path = run_dir / "config.json"
        config = config_from_dict(read_json(config_path, "the run's config"), source=str(config_path))
        return cls(run_dir, config, Stats.load(run_dir / "stats.json"))


def check_compatible(parent: Parent, config: Config) -> None:
    """Refuse, naming the first key, a config that would not build the parent's network."""
    old, new = _shape_keys(parent.config), _shape_keys(config)
    changed = changed_keys(old, new)
    if changed:
        key = changed[0]
        raise PPNetError(
            f"--init-from {parent.run_dir}: {key} differs from the parent run's ({_at(old, key)!r} there, "
            f"{_at(new, key)!r} here); a continued run needs the same features, model shape and tasks"
        )


def check_kinds(parent: Parent, kinds: dict[str, str]) -> None:
    """A continued run reads its columns as the parent did: the tables and the export's inputs depend on it."""
    for name, kind in kinds.items():
        if parent.stats.kinds.get(name, kind) != kind:
            raise PPNetError(
                f"--init-from {parent.run_dir}: column {name!r} is {kind} in this data, "
                f"{parent.stats.kinds[name]} in the parent run's"
            )


def _shape_keys(config: Config) -> dict:
    """The parts of a config that fix the network's variables (and the numeric inputs' meaning)."""
    raw = config.to_dict()
    model = {k: v for k, v in raw["model"].items() if k not in FREE_MODEL_KEYS}
    features = [{k: v for k, v in f.items() if k != "min_count"} for f in raw["features"]]
    return {
        "features": features,
        "model": model,
        "tasks": [{k: t[k] for k in ("name", "builds_on", "hidden_units")} for t in raw["tasks"]],
    }


def _at(tree, dotted: str):
    """The value at a key ``changed_keys`` names (``features[3].dim``), or ``None`` where absent."""
    for part in dotted.replace("[", ".[").split("."):
        if part.startswith("["):
            index = int(part[1:-1])
            tree = tree[index] if isinstance(tree, list) and index < len(tree) else None
        else:
            tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def warm_start(model: RankingModel, parent: Parent, with_optimizer: bool = True) -> None:
    """Copy the parent's best weights (and Adam state) into ``model``, built on the grown statistics.

    The values are read from the parent's checkpoint directly, by the keys ``model``'s own object
    graph gives them (it is the parent's, with larger tables): building the parent's model to
    restore into took a noticeable share of a daily continuation. Tables are copied field by
    field: a field's known rows keep their place (its vocabulary only grew at the end), the rows
    added for new ids keep their fresh initial values. Everything else has the parent's shape and
    is copied as it is. ``model`` may live under any strategy: mirrored variables take the value on
    every replica, tables that parameter servers hold in shards take their rows shard by shard.
    """
    checkpoint = ParentCheckpoint(parent.run_dir)
    optimizers = {parent.config.train.optimizer, model.config.train.optimizer}
    carry = with_optimizer and optimizers <= set(ADAM_FAMILY)
    if carry:  # create the slots the parent's moments go into
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)
    keys = checkpoint_keys(model, checkpoint.reader)
    rows = _known_rows(model, parent.config, parent.stats)

    def copy(key: str | None, weight, target: list[tf.Variable], what: str) -> None:
        known = rows.get(id(weight))  # a grown table: only its known rows are in the checkpoint
        shape = tuple(weight.shape) if known is None else (len(known), weight.shape[1])
        _copy(checkpoint.value(key, shape, what), target, known)

    for weight in logical_weights(model):
        copy(keys.get(id(weight)), weight, shards(weight), weight.name)
    if carry:
        for index, weight in enumerate(logical_weights(model, trainable=True)):
            moments = zip(*(adam_moments(model.optimizer, part) for part in shards(weight)))  # (m parts, v parts)
            for key, name, slots in zip(adam_moment_keys(index), "mv", moments):
                copy(key, weight, list(slots), f"Adam's {name} of {weight.name}")
        iterations = model.optimizer.iterations
        iterations.assign(checkpoint.value(keys.get(id(iterations)), (), "the optimizer's step count"))
    elif with_optimizer:
        log.info(
            "optimizer state is carried over between adam and lazy_adam only; %s starts afresh", sorted(optimizers)
        )
    log.info("initialised from %s (best epoch), optimizer state %s", parent.run_dir, "kept" if carry else "new")


class ParentCheckpoint:
    """The parent's best checkpoint, read value by value, each checked against the shape expected."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.reader = run_dir, tf.train.load_checkpoint(str(run_dir / BEST_WEIGHTS))
        self.shapes = self.reader.get_variable_to_shape_map()

    def value(self, key: str | None, shape: tuple, what: str) -> np.ndarray:
        """The value at ``key``; a one-line error if there is none or it has another shape."""
        found = self.shapes.get(key) if key else None
        if found is None or tuple(found) != tuple(shape):
            held = "no value" if found is None else f"shape {tuple(found)}, not {tuple(shape)},"
            raise PPNetError(
                f"--init-from {self.run_dir}: its checkpoint has {held} for {what} (written by another "
                f"ppnet version? this is {ppnet.__version__}); retrain the parent with this version"
            )
        return self.reader.get_tensor(key)


def _known_rows(model: RankingModel, parent_config: Config, parent_stats: Stats) -> dict[int, np.ndarray]:
    """Per embedding variable of ``model`` (by ``id``): the rows, in order, of the parent's table's
    rows (its fields' known ids, each field's block now starting at its grown offset)."""
    rows = {}
    for table, names in zip(model.embedding_tables(), model.table_fields(), strict=True):
        sizes = [table_size(parent_config.feature(name), parent_stats) for name in names]
        starts = [table.rows(i).start for i in range(len(names))]
        rows[id(table.embeddings)] = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, sizes)])
    return rows


def _copy(value: np.ndarray, target: list[tf.Variable], rows: np.ndarray | None) -> None:
    """``target = value`` (``target``: the variable's shards along the first axis, or itself), or
    for a grown table ``target[rows] = value``: the known rows only."""
    if rows is not None:
        grown = np.concatenate([tf.convert_to_tensor(part).numpy() for part in target])
        grown[rows] = value
        value = grown
    if len(target) == 1:
        target[0].assign(value)
        return
    bounds = np.cumsum([0, *(part.shape[0] for part in target)])
    for part, start, stop in zip(target, bounds, bounds[1:]):
        part.assign(value[start:stop])
