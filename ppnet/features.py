"""Raw columns → model inputs, inside the Keras model so the SavedModel takes raw features.

Categorical columns go through a lookup (``StringLookup`` / ``IntegerLookup`` with the training
vocabulary, or ``Hashing``) to an index; numeric columns are log-transformed, standardised and
sanitised. The embedding tables themselves live in the model, which may keep two tables per
personalisation id (the DNN's and the gates').
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ppnet.config import Feature
from ppnet.data import INT, NULL_INT_ID, STRING


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
    """Standardise one numeric column to shape ``[batch, 1]``; safe for any float a client sends.

    ``z = ((signed_log1p(x) if log1p else x) - mean) / std``. Nulls, NaN and +-Inf map to 0 (the
    training mean) and ``z`` is clipped to ``[-clip, clip]`` so huge values cannot blow up the
    tower.
    """

    def __init__(self, mean: float, std: float, log1p: bool = False, clip: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std, self.log1p, self.clip = float(mean), float(std), bool(log1p), float(clip)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = tf.cast(inputs, tf.float32)
        if self.log1p:
            x = tf.sign(x) * tf.math.log1p(tf.abs(x))
        z = (x - self.mean) / self.std
        z = tf.where(tf.math.is_finite(z), z, tf.zeros_like(z))
        return tf.clip_by_value(z, -self.clip, self.clip)[:, tf.newaxis]

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std, "log1p": self.log1p, "clip": self.clip}
