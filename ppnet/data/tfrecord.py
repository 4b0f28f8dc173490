"""TFRecord streaming for parameter-server workers, and ``tf.Example`` encoding of columns.

Parameter-server workers are plain TensorFlow servers without ppnet's parquet reader: the chief
writes each worker's shard once as TFRecord batches, which the workers read with ``tf.data`` alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from ppnet.data.pipeline import input_specs, iter_batches, target_specs
from ppnet.data.split import Split


def write_tfrecord_shards(
    split: Split, kinds: dict[str, str], targets: list[str], batch_size: int, count: int, directory: Path, seed: int = 0
) -> list[Path]:
    """Each of ``count`` workers' shards of ``split`` as a TFRecord file of whole, shuffled batches.

    Parameter-server workers are plain TensorFlow servers: they cannot run ppnet's Python
    parquet reader, so the chief streams each shard once into a format ``tf.data`` reads natively
    (one ``tf.train.Example`` per batch, each feature a list of ``batch_size`` values).
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        paths.append(directory / f"shard-{index:05d}-of-{count:05d}.tfrecord")
        with tf.io.TFRecordWriter(str(paths[-1])) as writer:
            for features, target_values in iter_batches(
                split.shard(index, count), kinds, targets, batch_size, shuffle_buffer=65536, seed=seed + index
            ):
                writer.write(to_example({**features, **target_values}).SerializeToString())
    return paths


def to_example(columns: dict[str, np.ndarray]):
    """Columns as one ``tf.Example``, each feature the list of its column's values: a whole batch for
    the parameter-server shards, one row for a ``serve_examples`` request."""

    def feature(values: np.ndarray) -> tf.train.Feature:
        if values.dtype.kind in "OUS":  # strings (object, unicode or bytes arrays)
            return tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[v if isinstance(v, bytes) else str(v).encode() for v in values])
            )
        if np.issubdtype(values.dtype, np.integer):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    return tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in columns.items()}))


def tfrecord_dataset(path: str, kinds: dict[str, str], targets: list[str]):
    """Endless (features, targets) batches from a shard written by ``write_tfrecord_shards``; pure TF."""
    specs = {**input_specs(kinds), **target_specs(targets)}
    parse = {name: tf.io.FixedLenSequenceFeature([], spec.dtype, allow_missing=True) for name, spec in specs.items()}

    def split_label(record):
        columns = tf.io.parse_single_example(record, parse)
        return {name: columns[name] for name in kinds}, {name: columns[name] for name in targets}

    return (
        tf.data.TFRecordDataset(path)
        .shuffle(256)
        .repeat()
        .map(split_label, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
