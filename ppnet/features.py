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
from ppnet.data.schema import INT, NULL_INT_ID, STRING
from ppnet.stats import Stats


def make_lookup(feature: Feature, kind: str, vocabulary: list | None) -> tf.keras.layers.Layer:
    """The index layer of a categorical feature: raw values → rows ``0 .. table_size - 1``."""
    name = f"{feature.name}_lookup"
    if feature.kind == "hash":
        return tf.keras.layers.Hashing(num_bins=feature.bins, name=name)
    if kind == STRING:
        values = vocabulary_values(kind, vocabulary)
        return tf.keras.layers.StringLookup(
            vocabulary=values,
            num_oov_indices=feature.num_oov,
            mask_token=None,
            oov_token=absent_token(values),
            name=name,
        )
    if kind == INT:
        return tf.keras.layers.IntegerLookup(
            vocabulary=np.array(vocabulary_values(kind, vocabulary), dtype=np.int64),
            num_oov_indices=feature.num_oov,
            mask_token=None,
            oov_token=NULL_INT_ID,
            name=name,
        )
    raise ValueError(f"categorical feature {feature.name} has input kind {kind}")


def absent_token(values: list[str]) -> str:
    """``StringLookup``'s OOV token for ``values``: Keras' ``"[UNK]"``, prefixed with NULs until no
    value equals it. Keras drops a vocabulary value equal to the token, which shifted every later
    value's row (and the export's, which keeps them) when a log spelled its unknowns ``"[UNK]"``."""
    taken, token = set(values), "[UNK]"
    while token in taken:
        token = "\x00" + token
    return token


def vocabulary_values(kind: str, vocabulary: list) -> list:
    """A vocabulary as the lookups take it: strings as ``str``; integers without the null id."""
    return [str(v) for v in vocabulary] if kind == STRING else [v for v in vocabulary if v != NULL_INT_ID]


def table_size(feature: Feature, stats: Stats) -> int:
    """Rows the embedding table of categorical ``feature`` needs: its hash buckets, or its OOV rows
    and its vocabulary, as its ``make_lookup`` layer indexes them. From the statistics alone, so a
    parent run's table sizes are known without building its lookups (``warmstart``)."""
    if feature.kind == "hash":
        return feature.bins
    return feature.num_oov + len(vocabulary_values(stats.kinds[feature.name], stats.vocabularies[feature.name]))


class VocabularyIndex(tf.keras.layers.Layer):
    """The vocabulary columns' rows, ``{name: [batch]}``, exactly as their ``make_lookup`` layers
    compute them, with a few hash-table lookups instead of one per column. The export uses it.

    In a one-row request every op's fixed cost counts, and the per-column lookup ops and their
    bookkeeping were a large share of the time. Here the columns of one kind share a table whose
    keys name the column: integer ``v`` of column ``i`` becomes ``v + i * 2**shift``
    (``-2**(shift-1) <= v < 2**(shift-1)``, so columns never share a key), a string gets the prefix
    ``"i\\x1f"``; an integer column whose vocabulary has larger values gets a table of its own.
    Training keeps the per-column layers: a training step measured slower with this fused form
    (the figures are in docs/performance.md).

    Rows follow Keras' layout: ``0 .. num_oov-1`` for unseen values and nulls (an unseen integer
    goes to ``v mod num_oov``, an unseen string to ``to_hash_bucket_fast(v, num_oov)``), then the
    vocabulary in order.

    Args:
        vocabularies: each vocabulary column's values, ``{name: values}``, as
            ``vocabulary_values`` gives them (in row order, integers without the null id).
        kinds: each column's input kind, ``{name: "int64" | "string"}``.
        num_oov: each column's number of OOV rows, ``{name: count}``.
        **kwargs: passed to ``tf.keras.layers.Layer``.
    """

    def __init__(self, vocabularies: dict[str, list], kinds: dict[str, str], num_oov: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        self.kinds, self.num_oov = dict(kinds), {n: int(k) for n, k in num_oov.items()}
        # numpy arrays: Keras would wrap Python lists in attributes element by element, which made
        # building the index (an export's) slow on vocabularies of many ids.
        self.vocabularies = {
            n: np.asarray(v, dtype=np.int64 if self.kinds[n] == INT else str) for n, v in vocabularies.items()
        }
        ints = [n for n in self.vocabularies if self.kinds[n] == INT]
        self.shift = 63 - len(ints).bit_length()  # i * 2**shift + v stays inside int64
        limit = 2 ** (self.shift - 1)
        packed = [n for n in ints if np.all((self.vocabularies[n] >= -limit) & (self.vocabularies[n] < limit))]
        strings = [n for n in self.vocabularies if self.kinds[n] == STRING]
        self.groups = [columns for columns in [packed, *[[n] for n in ints if n not in packed], strings] if columns]
        self.tables = [self._table(columns) for columns in self.groups]

    def _keys(self, columns: list[str], position: int, values: np.ndarray) -> np.ndarray:
        """The table keys of ``values`` of the column at ``position`` of ``columns``."""
        if self.kinds[columns[0]] == STRING:
            return np.char.add(string_key_prefix(position), values.astype(str))
        return values + np.int64(position) * np.int64(2**self.shift) if len(columns) > 1 else values

    def _table(self, columns: list[str]) -> tf.lookup.StaticHashTable:
        """One table for ``columns``: key of (column position, value) → the value's row in its column."""
        keys = [self._keys(columns, position, self.vocabularies[name]) for position, name in enumerate(columns)]
        rows = [
            np.arange(self.num_oov[n], self.num_oov[n] + len(self.vocabularies[n]), dtype=np.int64) for n in columns
        ]
        dtype = tf.string if self.kinds[columns[0]] == STRING else tf.int64
        initializer = tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.concatenate(keys), dtype), tf.constant(np.concatenate(rows), tf.int64)
        )
        return tf.lookup.StaticHashTable(initializer, default_value=-1)

    def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Looks every vocabulary column up.

        Args:
            features: raw columns ``{name: [batch]}``, at least the vocabulary columns (integer
                columns of any integer dtype, string columns as strings); others are ignored.

        Returns:
            ``{name: [batch]}`` int64 rows of each vocabulary column's embedding table.
        """
        index = {}
        for columns, table in zip(self.groups, self.tables):
            if self.kinds[columns[0]] == STRING:
                rows = self._string_rows(columns, table, tf.stack([features[n] for n in columns], axis=1))
            else:
                values = tf.stack([tf.cast(features[n], tf.int64) for n in columns], axis=1)
                rows = self._integer_rows(columns, table, values)
            index.update(zip(columns, tf.unstack(rows, axis=1)))
        return index

    def _integer_rows(self, columns: list[str], table: tf.lookup.StaticHashTable, values: tf.Tensor) -> tf.Tensor:
        unseen = self._unseen_integer_rows(columns, values)
        if len(columns) == 1:
            found = table.lookup(values)
            return tf.where(found >= 0, found, unseen)
        limit = 2 ** (self.shift - 1)
        inside = tf.clip_by_value(values, -limit, limit - 1)  # a value outside the range is unseen
        found = table.lookup(inside + tf.constant([i * 2**self.shift for i in range(len(columns))], tf.int64))
        return tf.where((found >= 0) & (inside == values), found, unseen)

    def _unseen_integer_rows(self, columns: list[str], values: tf.Tensor) -> tf.Tensor:
        """IntegerLookup's row of an unseen integer, ``v mod num_oov``: with one OOV row per column
        (the default) that is row 0, a constant, with no modulo over every value of a request."""
        num_oov = [self.num_oov[n] for n in columns]
        if set(num_oov) == {1}:
            return tf.constant(0, tf.int64)  # tf.where broadcasts it
        return tf.math.floormod(values, tf.constant(num_oov, tf.int64))

    def _string_rows(self, columns: list[str], table: tf.lookup.StaticHashTable, values: tf.Tensor) -> tf.Tensor:
        found = table.lookup(tf.constant([string_key_prefix(i) for i in range(len(columns))]) + values)
        num_oov = tf.constant([self.num_oov[n] for n in columns], tf.int64)
        unseen = tf.zeros_like(found)
        for buckets in sorted({self.num_oov[n] for n in columns} - {1}):  # StringLookup's OOV hash, per bucket count
            unseen = tf.where(num_oov == buckets, tf.strings.to_hash_bucket_fast(values, buckets), unseen)
        return tf.where(found >= 0, found, unseen)

    def get_config(self) -> dict:
        vocabularies = {n: values.tolist() for n, values in self.vocabularies.items()}
        return {**super().get_config(), "vocabularies": vocabularies, "kinds": self.kinds, "num_oov": self.num_oov}


def string_key_prefix(position: int) -> str:
    """What ``VocabularyIndex`` puts before the strings of the column at ``position`` of its table."""
    return f"{position}\x1f"


def vocabulary_index(features: list[Feature], stats: Stats) -> VocabularyIndex | None:
    """The fused index of the vocabulary ``features`` (None without any); the same rows as their lookups."""
    vocab = [f for f in features if f.kind == "vocab"]
    if not vocab:
        return None
    return VocabularyIndex(
        {f.name: vocabulary_values(stats.kinds[f.name], stats.vocabularies[f.name]) for f in vocab},
        {f.name: stats.kinds[f.name] for f in vocab},
        {f.name: f.num_oov for f in vocab},
        name="vocabulary_index",
    )


class NumericNormalizer(tf.keras.layers.Layer):
    """The numeric columns of a batch, standardised as one ``[batch, columns]`` tensor; safe for any
    float a client sends.

    Column ``i``: ``z = ((signed_log1p(x) if log1p[i] else x) - means[i]) / stds[i]``. Nulls, NaN
    and +-Inf map to 0 (the training mean) and ``z`` is clipped to ``[-clip, clip]`` so huge values
    cannot blow up the tower. One layer for all columns: the same few ops per request however
    many columns there are, instead of that many per column.

    Args:
        columns: the numeric column names, in the order of the output's columns.
        means: each column's training mean (after ``log1p`` where set).
        stds: each column's training standard deviation (after ``log1p`` where set).
        log1p: whether each column is ``signed_log1p``-transformed before standardising.
        clip: the bound on ``|z|``.
        **kwargs: passed to ``tf.keras.layers.Layer``.
    """

    def __init__(
        self, columns: list[str], means: list[float], stds: list[float], log1p: list[bool], clip: float = 10.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.columns = list(columns)
        self.means, self.stds = [float(m) for m in means], [float(s) for s in stds]
        self.log1p, self.clip = [bool(flag) for flag in log1p], float(clip)

    def call(self, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """Standardises the numeric columns.

        Args:
            features: raw columns ``{name: [batch]}``, at least ``columns`` (any real dtype,
                cast to float32; NaN for nulls); others are ignored.

        Returns:
            ``[batch, len(columns)]`` float32 values in ``[-clip, clip]``.
        """
        x = tf.stack([tf.cast(features[column], tf.float32) for column in self.columns], axis=1)
        if any(self.log1p):
            x = tf.where(tf.constant(self.log1p), tf.sign(x) * tf.math.log1p(tf.abs(x)), x)
        z = (x - tf.constant(self.means)) / tf.constant(self.stds)
        z = tf.where(tf.math.is_finite(z), z, tf.zeros_like(z))
        return tf.clip_by_value(z, -self.clip, self.clip)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "columns": self.columns,
            "means": self.means,
            "stds": self.stds,
            "log1p": self.log1p,
            "clip": self.clip,
        }


def numeric_normalizer(features: list[Feature], stats: Stats) -> NumericNormalizer | None:
    """The normaliser of the numeric features (None without any), from the training statistics."""
    numeric = [f for f in features if f.kind == "numeric"]
    if not numeric:
        return None
    return NumericNormalizer(
        [f.name for f in numeric],
        [stats.numeric[f.name][0] for f in numeric],
        [stats.numeric[f.name][1] for f in numeric],
        [f.log1p for f in numeric],
        name="numeric_normalizer",
    )
