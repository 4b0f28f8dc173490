"""The ranking model: a ``tfrs.Model`` with a ``tasks.Ranking`` task, PPNet or the plain DNN.

Built from a config and the training statistics only, so a run directory (config.json +
stats.json + checkpoint) is enough to rebuild it for export.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_recommenders as tfrs

from ppnet.config import Config
from ppnet.features import NumericNormalizer, make_lookup, table_size
from ppnet.layers import GatedTower
from ppnet.stats import Stats


class RankingModel(tfrs.Model):
    """PPNet (``model.name = "ppnet"``) or the same tower without gates (``"dnn"``).

    ``call(features)`` maps a dict of raw columns (each ``[batch]``) to logits ``[batch]``.
    Gate inputs, by ``model.gate_stop_gradient``:

    * ``shared``: ``concat(stop_gradient(all DNN inputs), gate-only embeddings of the ids)``;
      the gates cannot disturb the shared embeddings, and the ids get tables of their own.
    * ``ids``: the DNN's own embeddings, with ``stop_gradient`` on the personalisation ids only.

    The loss is per-example binary cross-entropy plus L2 on the embedding rows each example
    uses, averaged with ``tf.nn.compute_average_loss`` so it is correct under ``tf.distribute``.
    """

    def __init__(self, config: Config, stats: Stats, **kwargs):
        super().__init__(**kwargs)
        self.config, self.stats = config, stats
        model = config.model
        self.gated = model.name == "ppnet"
        categorical = [f for f in config.features if f.kind != "numeric"]
        self.categorical_names = [f.name for f in categorical]
        self.numeric_names = [f.name for f in config.features if f.kind == "numeric"]
        self.personal_ids = list(model.personal_ids) if self.gated else []
        self.lookups = {f.name: make_lookup(f, stats.kinds[f.name], stats.vocabularies.get(f.name))
                        for f in categorical}
        self.embeddings = {f.name: self._table(f, "embedding") for f in categorical}
        self.gate_embeddings = ({p: self._table(config.feature(p), "gate_embedding") for p in self.personal_ids}
                                if model.gate_stop_gradient == "shared" else {})
        self.normalizers = {name: NumericNormalizer(*stats.numeric[name], log1p=config.feature(name).log1p,
                                                    name=f"{name}_normalizer")
                            for name in self.numeric_names}
        rate = min(max(stats.positive_rate, 1e-6), 1 - 1e-6)
        self.tower = GatedTower(model.hidden_units, gate_hidden=model.gate_hidden, gated=self.gated,
                                dropout=model.dropout, batch_norm=model.batch_norm,
                                output_bias=math.log(rate / (1 - rate)), name="tower")
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
            metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc"),
                     tf.keras.metrics.BinaryCrossentropy(from_logits=True, name="logloss")])
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    def _table(self, feature, prefix: str) -> tf.keras.layers.Embedding:
        return tf.keras.layers.Embedding(table_size(self.lookups[feature.name]), feature.dim,
                                         name=f"{prefix}_{feature.name}")

    def forward(self, features: dict[str, tf.Tensor], training: bool = False):
        """Logits ``[batch]``, the gate values of each tower layer, and the embedding rows looked up."""
        index = {name: lookup(features[name]) for name, lookup in self.lookups.items()}
        embedded = {name: self.embeddings[name](index[name]) for name in self.categorical_names}
        numeric = [self.normalizers[name](features[name]) for name in self.numeric_names]
        dnn_input = tf.concat([embedded[n] for n in self.categorical_names] + numeric, axis=-1)
        used_rows = list(embedded.values())
        gate_input = None
        if self.gated and self.gate_embeddings:
            gate_ids = [self.gate_embeddings[p](index[p]) for p in self.personal_ids]
            used_rows += gate_ids
            gate_input = tf.concat([tf.stop_gradient(dnn_input), *gate_ids], axis=-1)
        elif self.gated:
            gate_input = tf.concat([tf.stop_gradient(embedded[n]) if n in self.personal_ids else embedded[n]
                                    for n in self.categorical_names] + numeric, axis=-1)
        logits, gates = self.tower(dnn_input, gate_input, training=training, return_gates=True)
        return logits, gates, used_rows

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.forward(features, training=training)[0]

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features, labels = inputs
        logits, _, used_rows = self.forward(features, training=training)
        per_example = self.task(labels[:, tf.newaxis], logits[:, tf.newaxis], training=training)
        if self.config.model.embedding_l2:  # on the rows this example used: cheap, and sparse gradients
            per_example += self.config.model.embedding_l2 * tf.reduce_sum(tf.square(tf.concat(used_rows, -1)), -1)
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


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam that updates only the embedding rows a batch used (``train.optimizer = "lazy_adam"``).

    Keras' Adam decays the moments of every row of a table on every step: a full pass over each
    table per step, which dominates training once hashed id tables have millions of rows. Here
    rows a batch did not touch keep their moments (as TF Addons' LazyAdam), the usual trade-off
    for sparse recommender embeddings. Dense weights are updated exactly as by Adam.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
        slot = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[slot], self._velocities[slot]
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grad)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


def build_model(config: Config, stats: Stats, compile: bool = True) -> RankingModel:
    """A model with its variables created (so weights can be restored into it); compiled for training."""
    model = RankingModel(config, stats, name=config.model.name)
    if not compile:
        model(dummy_batch(stats))
        return model
    optimizers = {"adam": tf.keras.optimizers.Adam, "lazy_adam": LazyAdam, "adagrad": tf.keras.optimizers.Adagrad,
                  "sgd": tf.keras.optimizers.SGD}
    model.compile(optimizer=optimizers[config.train.optimizer](learning_rate=config.train.learning_rate))
    model(dummy_batch(stats))
    return model


def dummy_batch(stats: Stats, rows: int = 1) -> dict[str, tf.Tensor]:
    """A batch of default raw values (unseen ids, zero numerics), to build variables."""
    defaults = {"int64": tf.constant(-1, tf.int64), "string": tf.constant(""), "float32": tf.constant(0.0)}
    return {name: tf.fill([rows], defaults[kind]) for name, kind in stats.kinds.items()}
