"""Raw columns → model inputs, inside the Keras model so the SavedModel takes raw features.

Categorical columns go through a lookup (``StringLookup`` / ``IntegerLookup`` with the training
vocabulary, or ``Hashing``) to an index; numeric columns are log-transformed, standardised and
sanitised. The embedding tables themselves live in the model (grouped by dimension, see
``layers.GroupedEmbedding``), which may keep a second, gate-only table per personalisation id.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ppnet.config import Feature
from ppnet.data import INT, NULL_INT_ID, STRING
from ppnet.stats import Stats


def make_lookup(feature: Feature, kind: str, vocabulary: list | None) -> tf.keras.layers.Layer:
    """The index layer of a categorical feature; its ``vocabulary_size()``/``num_bins`` sizes the table."""
    name = f"{feature.name}_lookup"
    if feature.kind == "hash":
        return tf.keras.layers.Hashing(num_bins=feature.bins, name=name)
    if kind == STRING:
        return tf.keras.layers.StringLookup(vocabulary=[str(v) for v in vocabulary], num_oov_indices=feature.num_oov,
                                            mask_token=None, name=name)
    if kind == INT:
        ids = np.array([v for v in vocabulary if v != NULL_INT_ID], dtype=np.int64)
        return tf.keras.layers.IntegerLookup(vocabulary=ids, num_oov_indices=feature.num_oov, mask_token=None,
                                             oov_token=NULL_INT_ID, name=name)
    raise ValueError(f"categorical feature {feature.name} has input kind {kind}")


def table_size(lookup: tf.keras.layers.Layer) -> int:
    """Rows the embedding table behind ``lookup`` needs."""
    if isinstance(lookup, tf.keras.layers.Hashing):
        return lookup.num_bins
    return lookup.vocabulary_size()


class NumericNormalizer(tf.keras.layers.Layer):
    """The numeric columns of a batch, standardised as one ``[batch, columns]`` tensor; safe for any
    float a client sends.

    Column ``i``: ``z = ((signed_log1p(x) if log1p[i] else x) - means[i]) / stds[i]``. Nulls, NaN
    and +-Inf map to 0 (the training mean) and ``z`` is clipped to ``[-clip, clip]`` so huge values
    cannot blow up the tower. One layer for all columns: a dozen ops per request instead of a
    dozen per column.
    """

    def __init__(self, columns: list[str], means: list[float], stds: list[float], log1p: list[bool],
                 clip: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.columns = list(columns)
        self.means, self.stds = [float(m) for m in means], [float(s) for s in stds]
        self.log1p, self.clip = [bool(flag) for flag in log1p], float(clip)

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        x = tf.stack([tf.cast(features[column], tf.float32) for column in self.columns], axis=1)
        if any(self.log1p):
            x = tf.where(tf.constant(self.log1p), tf.sign(x) * tf.math.log1p(tf.abs(x)), x)
        z = (x - tf.constant(self.means)) / tf.constant(self.stds)
        z = tf.where(tf.math.is_finite(z), z, tf.zeros_like(z))
        return tf.clip_by_value(z, -self.clip, self.clip)

    def get_config(self) -> dict:
        return {**super().get_config(), "columns": self.columns, "means": self.means, "stds": self.stds,
                "log1p": self.log1p, "clip": self.clip}


def numeric_normalizer(features: list[Feature], stats: Stats) -> NumericNormalizer | None:
    """The normaliser of the numeric features (None without any), from the training statistics."""
    numeric = [f for f in features if f.kind == "numeric"]
    if not numeric:
        return None
    return NumericNormalizer([f.name for f in numeric], [stats.numeric[f.name][0] for f in numeric],
                             [stats.numeric[f.name][1] for f in numeric], [f.log1p for f in numeric],
                             name="numeric_normalizer")
