"""The ranking model: a ``tfrs.Model`` with a ``tasks.Ranking`` task: PPNet, PEPNet or the plain DNN.

Built from a config and the training statistics only, so a run directory (config.json +
stats.json + checkpoint) is enough to rebuild it for export.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from ppnet.config import Config, Feature, Task
from ppnet.features import make_lookup, numeric_normalizer, table_size
from ppnet.layers import (
    GatedTower,
    GateNNs,
    GroupedEmbedding,
    LogitTransfer,
    MixtureOfExperts,
    StoppedIdFields,
    StoppedTowerInput,
    flatten,
)
from ppnet.optimizers import OPTIMIZERS
from ppnet.stats import Stats
from ppnet.tf_private import sharded_container


@dataclass(frozen=True)
class FeatureGroups:
    """The categorical features by what they mean to the model (their tables are stored apart,
    grouped by dimension, see ``grouped``).

    * ``tower``: embedded into the tower's input (the shared embeddings);
    * ``personal_ids``: the ids the gates personalise by (none for the DNN);
    * ``gate_ids``: those of the ids with tables of their own that only the gates read
      (``shared`` gate mode);
    * ``domain``: EPNet's domain features (``pepnet``), with tables of their own that only EPNet
      reads; they are embedded into the tower as well, like any feature.
    """

    tower: tuple[str, ...]
    personal_ids: tuple[str, ...]
    gate_ids: tuple[str, ...]
    domain: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: Config) -> FeatureGroups:
        model = config.model
        categorical = [f.name for f in config.features if f.kind != "numeric"]
        ids = tuple(model.personal_ids) if model.gated else ()
        tower = tuple(n for n in categorical if model.personal_ids_in_tower or n not in ids)
        gate_ids = tuple(n for n in categorical if n in ids) if ids and model.gate_stop_gradient == "shared" else ()
        domain = tuple(model.domain_features) if model.name == "pepnet" else ()
        return cls(tower, ids, gate_ids, domain)


class TowerInputs(NamedTuple):
    """What the towers read: the tower's input ``[batch, d]``, the parts of the gates' input
    (``[batch, g_i]`` each, none for the DNN), the embedding rows looked up (``[batch, fields,
    dim]`` per table group, for the L2 penalty), EPNet's gate on the shared embeddings (``[batch,
    e]``, ``pepnet`` only), and under ``model.task_sharing = "primary"`` each later task's own
    embeddings of the personal ids, by task (``[batch, g]``, its gates' input beside the shared one),
    and its own embeddings of ``model.task_features`` (``[batch, t]``, its tower's input beside the
    shared one).
    """

    tower: tf.Tensor
    gate_parts: list[tf.Tensor]
    embedding_rows: list[tf.Tensor]
    epnet_gate: tf.Tensor | None = None
    task_ids: dict[str, tf.Tensor] | None = None
    task_embeddings: dict[str, tf.Tensor] | None = None

    def head_inputs(self) -> tuple:
        """The tensors the heads read, as one nested structure (``tf.nest`` flattens it for the
        export's frozen towers)."""
        return (self.tower, self.gate_parts, self.task_ids or {}, self.task_embeddings or {})

    @classmethod
    def of_heads(cls, structure: tuple) -> TowerInputs:
        """Inputs holding only what the heads read, from a ``head_inputs()`` structure."""
        tower, gate_parts, task_ids, task_embeddings = structure
        return cls(tower, list(gate_parts), [], task_ids=dict(task_ids), task_embeddings=dict(task_embeddings))


class ModelOutput(NamedTuple):
    """The forward pass by task: ``logits[task]`` ``[batch]``, and ``gates[task]`` the gate values
    ``[batch, width_i]`` of each of that task's tower layers (empty for the DNN)."""

    logits: dict[str, tf.Tensor]
    gates: dict[str, list[tf.Tensor]]


class RankingModel(tfrs.Model):
    """PPNet (``model.name = "ppnet"``), PPNet behind EPNet's domain gate (``"pepnet"``), or the
    same tower without gates (``"dnn"``).

    ``call(features)`` maps a dict of raw columns (each ``[batch]``) to logits ``[batch]``.
    Gate inputs, by ``model.gate_stop_gradient``:

    * ``shared``: ``concat(stop_gradient(all DNN inputs), gate-only embeddings of the ids)``;
      the gates cannot disturb the shared embeddings, and the ids get tables of their own.
    * ``ids``: the DNN's own embeddings, with ``stop_gradient`` on the personalisation ids only.

    With several tasks and ``model.task_sharing = "primary"`` the later tasks' towers and gates
    read the shared input under ``stop_gradient``, their gates beside id tables of their own
    (``task_input``).

    With ``model.personal_ids_in_tower = false`` (``shared`` mode only) the ids feed the gates
    alone, as in Kuaishou's PPNet: the tower cannot memorise them directly, only let them scale
    its units.

    Each feature has its own embedding table; tables of one dimension are stored together as one
    ``GroupedEmbedding`` (one lookup for all of them). The loss is per-example binary
    cross-entropy plus L2 on the embedding rows each example uses, averaged with
    ``tf.nn.compute_average_loss`` so it is correct under ``tf.distribute``.

    Args:
        config: the run's configuration (features, ``model`` settings).
        stats: the training statistics: input kinds, vocabularies, numeric mean and std, CTR.
        precision: the Keras dtype policy of the towers, gates, EPNet and MMoE (``float32`` or
            ``mixed_bfloat16``, see ``ppnet.precision``); embeddings and logits are float32.
        **kwargs: passed to ``tfrs.Model``.
    """

    def __init__(self, config: Config, stats: Stats, precision: str = "float32", **kwargs):
        super().__init__(**kwargs)
        self.config, self.stats, self.precision = config, stats, precision
        model = config.model
        self.gated = model.gated
        self.task_names = config.task_names  # the label columns; the first is the primary task
        self.builds_on = {task.name: task.builds_on for task in config.tasks if task.builds_on}
        self.groups = FeatureGroups.of(config)
        self.lookups = {
            f.name: make_lookup(f, stats.kinds[f.name], stats.vocabularies.get(f.name))
            for f in config.features
            if f.kind != "numeric"
        }
        # Tables grouped by dimension, keyed "dim<d>" (trackable dicts need string keys).
        self.fields = grouped([config.feature(n) for n in self.groups.tower])
        self.embeddings = {group: self._tables(names, f"embedding_{group}") for group, names in self.fields.items()}
        self.gate_fields = grouped([config.feature(n) for n in self.groups.gate_ids])
        self.gate_embeddings = {
            group: self._tables(names, f"gate_embedding_{group}") for group, names in self.gate_fields.items()
        }
        self.gate_input = self._gate_input()
        if self.groups.domain:  # only pepnet has these: the other models' checkpoints keep their layout
            self.domain_fields = grouped([config.feature(n) for n in self.groups.domain])
            self.domain_embeddings = {
                group: self._tables(names, f"domain_embedding_{group}") for group, names in self.domain_fields.items()
            }
            shared_width = sum(config.feature(n).dim for n in self.groups.tower)
            self.epnet = GateNNs([shared_width], model.gate_hidden, dtype=precision, name="epnet")
        if model.task_sharing == "primary":
            # The first task trains every shared table; each later task's gates read personal-id
            # tables of its own, trained by its loss alone (see ``task_input``).
            self.task_gate_embeddings = self._later_task_tables(self.gate_fields, "gate_embedding")
        if model.task_features:  # created only then: the other models' checkpoints keep their layout
            self.task_fields = grouped([config.feature(n) for n in model.task_features])
            self.task_embeddings = self._later_task_tables(self.task_fields, "embedding")
        self.normalizer = numeric_normalizer(config.features, stats)
        if model.name == "mmoe":
            self.mmoe = MixtureOfExperts(
                model.experts, model.hidden_units[:-1], len(self.task_names), dtype=precision, name="mmoe"
            )
        # The first task's tower and loss keep the single-task attribute names (checkpoints of runs
        # from before tasks load); the other tasks' live in dicts, created only when there are some.
        towers = [self._tower(task, f"tower_{task.name}" if i else "tower") for i, task in enumerate(config.tasks)]
        rankings = [self._ranking(task) for task in self.task_names]
        self.tower, self.task = towers[0], rankings[0]
        if len(self.task_names) > 1:
            self.task_towers = dict(zip(self.task_names[1:], towers[1:]))
            self.task_rankings = dict(zip(self.task_names[1:], rankings[1:]))
        if self.builds_on:  # created only then: the other models' checkpoints keep their layout
            self.logit_transfers = {task: LogitTransfer(name=f"{task}_builds_on") for task in self.builds_on}
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    def _tower(self, task: Task, name: str) -> GatedTower:
        """``task``'s tower, its logit bias at the log-odds of the task's training rate. Under
        ``mmoe`` it reads its mixture of experts and is the last hidden layer alone, ungated."""
        model = self.config.model
        return GatedTower(
            model.hidden_units[-1:] if model.name == "mmoe" else self.config.tower_units(task),
            gate_hidden=model.gate_hidden,
            gated=self.gated,
            dropout=model.dropout,
            batch_norm=model.batch_norm,
            output_bias=self.stats.log_odds(task.name),
            dtype=self.precision,
            name=name,
        )

    def _ranking(self, task: str) -> tfrs.tasks.Ranking:
        """``task``'s loss and streaming metrics (``auc``, ``logloss``; suffixed by the task when
        there are several)."""
        suffix = f"_{task}" if len(self.task_names) > 1 else ""
        return tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
            metrics=[
                tf.keras.metrics.AUC(from_logits=True, name=f"auc{suffix}"),
                tf.keras.metrics.BinaryCrossentropy(from_logits=True, name=f"logloss{suffix}"),
            ],
        )

    def towers(self) -> dict[str, GatedTower]:
        """Each task's tower, by task."""
        return {self.task_names[0]: self.tower, **getattr(self, "task_towers", {})}

    def rankings(self) -> dict[str, tfrs.tasks.Ranking]:
        """Each task's ``tfrs.tasks.Ranking`` (loss and metrics), by task."""
        return {self.task_names[0]: self.task, **getattr(self, "task_rankings", {})}

    def _gate_input(self) -> StoppedTowerInput | StoppedIdFields | None:
        """The layer that builds the gates' input, one per gate mode (none for the DNN)."""
        if self.groups.gate_ids:
            return StoppedTowerInput(name="gate_input")
        if self.gated:
            ids = self.groups.personal_ids
            return StoppedIdFields([[n in ids for n in names] for names in self.fields.values()], name="gate_input")
        return None

    def _tables(self, names: list[str], layer_name: str) -> GroupedEmbedding:
        return GroupedEmbedding(
            [table_size(self.config.feature(n), self.stats) for n in names],
            self.config.feature(names[0]).dim,
            name=layer_name,
        )

    def _later_task_tables(self, fields: dict[str, list[str]], kind: str) -> dict[str, dict[str, GroupedEmbedding]]:
        """Tables of ``fields`` (by group) for each later task, named ``<task>_<kind>_<group>``."""
        return {
            task: {group: self._tables(names, f"{task}_{kind}_{group}") for group, names in fields.items()}
            for task in self.task_names[1:]
        }

    def embedding_tables(self) -> list[GroupedEmbedding]:
        """Every embedding table of the model: the tower's, the gates' own, EPNet's domain tables
        and the later tasks' own."""
        return [table for tables, _ in self._table_groups() for table in tables.values()]

    def table_fields(self) -> list[list[str]]:
        """The features of each of ``embedding_tables()``, in the same order."""
        return [names for tables, fields in self._table_groups() for names in fields.values()]

    def _table_groups(self) -> list[tuple[dict[str, GroupedEmbedding], dict[str, list[str]]]]:
        """Each dict of tables by group with its fields by group: the tower's, the gates' own,
        EPNet's domain tables, then each later task's own (``task_sharing = "primary"``)."""
        groups = [(self.embeddings, self.fields), (self.gate_embeddings, self.gate_fields)]
        if self.groups.domain:
            groups.append((self.domain_embeddings, self.domain_fields))
        groups += [(tables, self.gate_fields) for tables in getattr(self, "task_gate_embeddings", {}).values()]
        groups += [(tables, self.task_fields) for tables in getattr(self, "task_embeddings", {}).values()]
        return groups

    def table_rows(self, name: str, gate: bool = False) -> tuple[tf.Variable, slice]:
        """The grouped variable holding feature ``name``'s table (the DNN's, or the gates' own) and its rows."""
        group = group_of(self.config.feature(name))
        fields, tables = (self.gate_fields, self.gate_embeddings) if gate else (self.fields, self.embeddings)
        return tables[group].embeddings, tables[group].rows(fields[group].index(name))

    @staticmethod
    def _embed(
        tables: dict[str, GroupedEmbedding], fields: dict[str, list[str]], index: dict[str, tf.Tensor]
    ) -> dict[str, tf.Tensor]:
        """Each group's rows ``[batch, fields, dim]``: its fields' indices stacked, one lookup."""
        return {group: table(tf.stack([index[n] for n in fields[group]], axis=1)) for group, table in tables.items()}

    def tower_inputs(
        self, features: dict[str, tf.Tensor], index: dict[str, tf.Tensor] | None = None, training: bool = False
    ) -> TowerInputs:
        """The towers' and gates' inputs from raw columns ``{name: [batch]}``.

        ``index`` (each categorical column's table rows) replaces the model's own lookups; the
        export passes the same rows computed by a ``VocabularyIndex``. Under ``pepnet`` EPNet
        scales the shared embeddings first (``epnet_scaled``)."""
        index = index or {}
        index = {
            **{name: lookup(features[name]) for name, lookup in self.lookups.items() if name not in index},
            **index,
        }
        tower_rows = list(self._embed(self.embeddings, self.fields, index).values())
        id_rows = list(self._embed(self.gate_embeddings, self.gate_fields, index).values())
        numeric = [self.normalizer(features)] if self.normalizer else []
        shared, epnet_gate, domain_rows = [flatten(rows) for rows in tower_rows], None, []
        if self.groups.domain:
            domain_rows = list(self._embed(self.domain_embeddings, self.domain_fields, index).values())
            shared, epnet_gate = self.epnet_scaled(tf.concat(shared, axis=-1), domain_rows, training)
        tower_input = tf.concat(shared + numeric, axis=-1)
        gate_parts = self.gate_input(tower_input, tower_rows, numeric, id_rows) if self.gate_input else []
        task_ids, id_rows_own = self._embed_later_tasks(
            getattr(self, "task_gate_embeddings", {}), self.gate_fields, index
        )
        task_embeddings, feature_rows_own = self._embed_later_tasks(
            getattr(self, "task_embeddings", {}), getattr(self, "task_fields", {}), index
        )
        rows = tower_rows + id_rows + domain_rows + id_rows_own + feature_rows_own
        return TowerInputs(tower_input, gate_parts, rows, epnet_gate, task_ids or None, task_embeddings or None)

    def _embed_later_tasks(
        self, tables: dict[str, dict[str, GroupedEmbedding]], fields: dict[str, list[str]], index: dict[str, tf.Tensor]
    ) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
        """Each later task's own embeddings of ``fields``, flattened ``[batch, w]`` by task, and the
        rows looked up (for the L2 penalty)."""
        flat, rows = {}, []
        for task, task_tables in tables.items():
            own = list(self._embed(task_tables, fields, index).values())
            flat[task] = tf.concat([flatten(r) for r in own], axis=-1)
            rows += own
        return flat, rows

    def epnet_scaled(
        self, shared: tf.Tensor, domain_rows: list[tf.Tensor], training: bool
    ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """EPNet: ``[shared * gate]`` and the gate ``[batch, e]``, computed from the domain features'
        own embeddings and ``stop_gradient`` of the shared embeddings ``[batch, e]``.

        One multiplier per unit of the shared embeddings (not one per field): the finest scaling
        the paper's element-wise product allows. The gate starts at 1, so an untrained ``pepnet``
        is PPNet; the shared embeddings train through the towers only, not through their gate.
        """
        domain = tf.concat([flatten(rows) for rows in domain_rows], axis=-1)
        (gate,) = self.epnet([domain, tf.stop_gradient(shared)], training=training)  # float32, as the embeddings
        return [shared * gate], gate

    def heads(self, inputs: TowerInputs, training: bool = False) -> ModelOutput:
        """Each task's tower on the inputs (under ``mmoe``, on the task's mixture of the experts):
        logits and gate values by task. All towers read the same inputs, except later tasks'
        under ``task_sharing = "primary"`` (``task_input``); a task that ``builds_on`` an earlier
        one adds a learned multiple of that task's logit to its own (``LogitTransfer``)."""
        towers = self.towers()
        if self.config.model.name == "mmoe":
            tower_inputs = self.mmoe(inputs.tower, training=training)
        else:
            tower_inputs = [inputs.tower] * len(towers)
        logits, gates = {}, {}
        for (task, tower), x in zip(towers.items(), tower_inputs, strict=True):
            x, gate_parts = self.task_input(inputs, task, x)
            logits[task], gates[task] = tower(x, gate_parts or None, training=training, return_gates=True)
            if task in self.builds_on:  # an earlier task's: already computed
                logits[task] = self.logit_transfers[task](logits[task], logits[self.builds_on[task]])
        return ModelOutput(logits, gates)

    @staticmethod
    def task_input(inputs: TowerInputs, task: str, shared: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """``task``'s tower input and gate parts. Under ``task_sharing = "primary"`` a later task's
        tower reads the shared input under ``stop_gradient``, and its gates read that and its own
        personal-id embeddings: its loss trains only its tower, gates and id tables, so the shared
        parts get the first task's gradient alone, as with one task, and every task can peak at
        the same epoch. With ``model.task_features`` its tower also reads its own embeddings of
        those features."""
        own_ids = (inputs.task_ids or {}).get(task)
        if own_ids is None:
            return shared, inputs.gate_parts
        stopped = tf.stop_gradient(shared)
        own = (inputs.task_embeddings or {}).get(task)
        return (stopped if own is None else tf.concat([stopped, own], axis=-1)), [stopped, own_ids]

    def forward(self, features: dict[str, tf.Tensor], training: bool = False) -> ModelOutput:
        """Logits and gate values by task, from raw columns ``{name: [batch]}``."""
        return self.heads(self.tower_inputs(features, training=training), training=training)

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Scores a batch of raw examples.

        Args:
            features: raw columns ``{name: [batch]}``, one per ``stats.kinds`` entry, of the
                kind it names (int64, string or float32).
            training: the tower's training mode (dropout, batch statistics, the gates' per-part
                products).

        Returns:
            ``[batch]`` logits; the click probability is their sigmoid.
        """
        return self.forward(features, training=training).logits[self.task_names[0]]

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        """The weighted sum of the tasks' per-example losses plus the embedding L2, averaged over
        the global batch.

        ``inputs`` is ``(features, targets)``, ``targets`` the label and mask columns by name. A
        masked task's loss counts only the rows its mask keeps and is rescaled by ``rows / kept``
        (per replica batch), so it is that task's mean loss over its rows, whatever its mask rate.
        """
        features, targets = inputs
        tower_inputs = self.tower_inputs(features, training=training)
        logits = self.heads(tower_inputs, training=training).logits
        per_example = tf.zeros_like(logits[self.task_names[0]])
        rankings = self.rankings()
        for task in self.config.tasks:
            mask = targets[task.mask] if task.mask else None
            loss = rankings[task.name](
                targets[task.name][:, tf.newaxis],
                logits[task.name][:, tf.newaxis],
                sample_weight=mask,
                training=training,
            )
            if mask is not None:
                loss *= tf.cast(tf.size(mask), loss.dtype) / tf.maximum(tf.reduce_sum(mask), 1.0)
            per_example += task.weight * loss
        used_rows = tower_inputs.embedding_rows
        if self.config.model.embedding_l2 and used_rows:  # on the rows each example used: cheap, sparse gradients
            per_example += self.config.model.embedding_l2 * tf.add_n(
                [tf.reduce_sum(tf.square(rows), axis=[1, 2]) for rows in used_rows]
            )
        self.loss_tracker.update_state(per_example)
        return tf.nn.compute_average_loss(per_example)

    def get_config(self) -> dict:
        """What the model is built from (its weights come from checkpoints, see ``build_model``)."""
        return {"config": self.config.to_dict(), "stats": vars(self.stats)}

    def train_step(self, inputs):
        super().train_step(inputs)
        return self.metric_results()

    def test_step(self, inputs):
        super().test_step(inputs)
        return self.metric_results()

    def metric_results(self) -> dict[str, tf.Tensor]:
        """Only metric results, so that Keras replaces each epoch's logs by the metrics read across
        replicas (global AUC and loss under ``tf.distribute``) instead of summing per-replica values,
        which it does for TFRS's extra ``loss`` / ``regularization_loss`` entries."""
        return {metric.name: metric.result() for metric in self.metrics}


OPTIMIZER_SLOTS = {"adam": 2, "lazy_adam": 2, "adagrad": 1, "sgd": 0}


def weight_bytes(config: Config, stats: Stats) -> dict[str, int]:
    """Bytes the model's weights will take with their optimizer slots, by the config key that sets
    them (``features.NAME`` per table, ``model.hidden_units`` for the dense layers), computed from
    the config and the statistics alone: a model too large for the machine is refused before it is
    built. Dense layers also count their gradient; embedding gradients are sparse."""
    groups = FeatureGroups.of(config)
    slots = OPTIMIZER_SLOTS[config.train.optimizer]

    # a feature may have several tables: the tower's, the gates' own, and each later task's own
    later_tasks = len(config.task_names) - 1 if config.model.task_sharing == "primary" else 0
    tables: dict[str, int] = {}
    task_features = config.model.task_features * later_tasks
    for name in [*groups.tower, *groups.gate_ids * (1 + later_tasks), *groups.domain, *task_features]:
        feature, key = config.feature(name), f"features.{name}"
        tables[key] = tables.get(key, 0) + table_size(feature, stats) * feature.dim * 4 * (1 + slots)
    width = sum(config.feature(n).dim for n in groups.tower) + sum(f.kind == "numeric" for f in config.features)
    return {**tables, "model.hidden_units": dense_weights(config, width) * 4 * (2 + slots)}


def dense_weights(config: Config, width: int) -> int:
    """The dense layers' weights of every tower, gate and expert, for a tower input ``width`` wide."""
    model, groups = config.model, FeatureGroups.of(config)

    def mlp(units: list[int], inputs: int) -> int:
        return sum(a * b + b for a, b in itertools.pairwise([inputs, *units]))

    def gates(inputs: int, widths: list[int]) -> int:
        hidden = model.gate_hidden * len(widths)
        return (inputs + 1) * hidden + (model.gate_hidden + 1) * sum(widths)

    tasks = len(config.tasks)
    transfers = sum(1 for task in config.tasks if task.builds_on)  # one scalar each (LogitTransfer)
    if model.name == "mmoe":
        experts = model.experts * mlp(model.hidden_units[:-1], width) + tasks * (width + 1) * model.experts
        return experts + tasks * mlp([model.hidden_units[-1], 1], model.hidden_units[-2]) + transfers
    # the later tasks' towers also read their own embeddings of model.task_features
    own = sum(config.feature(n).dim for n in model.task_features)
    widths = [width] + [width + own] * (tasks - 1)
    units = [config.tower_units(task) for task in config.tasks]
    towers = sum(mlp([*u, 1], w) for u, w in zip(units, widths)) + transfers
    if model.name == "dnn":
        return towers
    gate_input = width + sum(config.feature(n).dim for n in groups.gate_ids)
    shared = sum(config.feature(n).dim for n in groups.tower)  # what EPNet scales: the embeddings, not numerics
    epnet = gates(shared + sum(config.feature(n).dim for n in groups.domain), [shared]) if groups.domain else 0
    return towers + sum(gates(gate_input, [w, *u]) for u, w in zip(units, widths)) + epnet


def build_model(
    config: Config, stats: Stats, compile: bool = True, precision: str = "float32", steps_per_call: int = 1
) -> RankingModel:
    """A model with its variables created (so weights can be restored into it); compiled for training.

    ``precision`` is the towers' Keras dtype policy (``ppnet.precision``); the variables are float32
    under either, so weights move between a bfloat16 training model and a float32 one as they are.
    ``steps_per_call``: training steps per call of Keras' train function (``ppnet.train.steps_per_call``).
    """
    model = RankingModel(config, stats, precision=precision, name=config.model.name)
    if not compile:
        model(dummy_batch(stats))
        return model
    model.compile(
        optimizer=OPTIMIZERS[config.train.optimizer](learning_rate=config.train.learning_rate),
        steps_per_execution=steps_per_call,
    )
    model(dummy_batch(stats))
    return model


def logical_weights(model: RankingModel, trainable: bool = False) -> list:
    """``model.weights`` (or its trainable ones) with each variable that parameter servers hold in
    shards (embedding tables, large dense kernels) as the one ``ShardedVariable`` the shards make
    up: the variables of the same model built outside ``tf.distribute``, in their order."""
    variables, seen = [], set()
    for weight in model.trainable_weights if trainable else model.weights:
        whole = sharded_container(weight) or weight  # the first shard stands for the whole
        if id(whole) not in seen:
            seen.add(id(whole))
            variables.append(whole)
    return variables


def unsharded_weights(model: RankingModel) -> list[np.ndarray]:
    """``model.get_weights()`` with each sharded table as one array (see ``logical_weights``)."""
    return [tf.convert_to_tensor(weight).numpy() for weight in logical_weights(model)]


def shards(variable) -> list[tf.Variable]:
    """The variables that hold ``variable``: its shards along the first axis, or itself."""
    return list(getattr(variable, "variables", [variable]))


def dummy_batch(stats: Stats, rows: int = 1) -> dict[str, tf.Tensor]:
    """A batch of default raw values (unseen ids, zero numerics), to build variables."""
    defaults = {"int64": tf.constant(-1, tf.int64), "string": tf.constant(""), "float32": tf.constant(0.0)}
    return {name: tf.fill([rows], defaults[kind]) for name, kind in stats.kinds.items()}


def grouped(features: list[Feature]) -> dict[str, list[str]]:
    """Feature names by table group, in config order."""
    groups: dict[str, list[str]] = {}  # built whole: Keras tracks (and freezes) dict attributes
    for feature in features:
        groups.setdefault(group_of(feature), []).append(feature.name)
    return groups


def group_of(feature: Feature) -> str:
    """The table group of a categorical feature: tables of one dimension share one variable."""
    return f"dim{feature.dim}"
