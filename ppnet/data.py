"""Parquet click logs → validated, shuffled, batched ``tf.data`` pipelines, streaming.

Files are read record batch by record batch with pyarrow (only the needed columns); rows never
all sit in memory at once, so peak memory is bounded by the shuffle buffer, not by the log size.
"""

from __future__ import annotations

import glob
import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from ppnet.config import Config
from ppnet.errors import PPNetError

# Column kinds of the raw inputs, as they appear in the model's serving signature.
INT, STRING, FLOAT = "int64", "string", "float32"
NULL_INT_ID = -1  # nulls in integer id columns: never in a vocabulary, so they go to OOV
NULL_STRING_ID = ""  # nulls in string id columns


def resolve_files(path: str | Path) -> list[Path]:
    """A parquet file, a directory of them (recursive) or a glob → sorted list of files."""
    text = str(path)
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file())
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
    if not files:
        raise PPNetError(f"{text}: no parquet files found (expected a .parquet file, a directory of them, or a glob)")
    return files


def column_kind(arrow_type: pa.DataType) -> str | None:
    """The signature kind of an arrow column type, or None if unusable as a feature."""
    if arrow_type == pa.uint64():
        return None  # ids past 2**63 do not fit the model's int64 inputs: hash them or store as int64
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return INT
    if pa.types.is_floating(arrow_type):
        return FLOAT
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_dictionary(arrow_type):
        return STRING
    return None


def input_kinds(config: Config, files: list[Path]) -> dict[str, str]:
    """Validate every file's schema against the config; return each feature's input kind.

    Categorical features keep their column kind (int ids stay int64, strings stay strings);
    numeric features are float32 whatever numeric type the file stores.
    """
    kinds: dict[str, str] = {}
    for file in files:
        schema = read_schema(file)
        for column in [config.data.label, config.data.user_column, *(f.name for f in config.features)]:
            if column not in schema.names:
                raise PPNetError(f"{file}: column {column!r} is missing (the config expects it)")
        check_user_column(file, schema, config.data.user_column)
        label_kind = column_kind(schema.field(config.data.label).type)
        if label_kind not in (INT, FLOAT):
            raise PPNetError(f"{file}: label column {config.data.label!r} has type "
                             f"{schema.field(config.data.label).type}; expected 0/1 integers or floats")
        for feature in config.features:
            kind = column_kind(schema.field(feature.name).type)
            expected = (INT, FLOAT) if feature.kind == "numeric" else (INT, STRING)
            if kind not in expected:
                raise PPNetError(f"{file}: column {feature.name!r} has type {schema.field(feature.name).type}; "
                                 f"a {feature.kind} feature expects {' or '.join(expected)}")
            kind = FLOAT if feature.kind == "numeric" else kind
            if kinds.setdefault(feature.name, kind) != kind:
                raise PPNetError(f"{file}: column {feature.name!r} is {kind} here but {kinds[feature.name]} "
                                 f"in {files[0]}; every file must store it with one type")
    return kinds


def check_user_column(file: Path, schema: pa.Schema, column: str) -> None:
    """gAUC groups rows by this column, so it must hold ids (int or string), not floats or lists."""
    arrow_type = schema.field(column).type
    if not pa.types.is_integer(arrow_type) and column_kind(arrow_type) != STRING:
        raise PPNetError(f"{file}: user column {column!r} has type {arrow_type}; "
                         "expected int or string user ids")


def read_schema(file: Path) -> pa.Schema:
    try:
        return pq.read_schema(file)
    except (pa.ArrowException, OSError) as err:
        raise PPNetError(f"{file}: not a readable parquet file ({one_line(err)})") from None


def one_line(err: BaseException) -> str:
    """An arrow error message on one line (arrow's messages often span several)."""
    return " ".join(str(err).split())


@dataclass(frozen=True)
class Split:
    """A set of parquet files, an optional row filter (e.g. ``date >= 20220503``) and, for a worker's
    shard of fewer files than workers, the row groups of each file it reads."""

    files: tuple[Path, ...]
    filter: pc.Expression | None = None
    description: str = ""
    row_groups: tuple[tuple[Path, tuple[int, ...]], ...] | None = None

    def batches(self, columns: list[str], batch_rows: int = 65536) -> Iterator[tuple[Path, pa.RecordBatch]]:
        """Stream (file, record batch) pairs with only ``columns``, in file order."""
        groups = dict(self.row_groups or ())
        for file in self.files:
            try:
                source = pds.dataset(file, format="parquet")
                if file in groups:
                    fragment = next(iter(source.get_fragments())).subset(row_group_ids=list(groups[file]))
                    batches = fragment.to_batches(columns=columns, filter=self.filter, batch_size=batch_rows)
                else:
                    batches = source.scanner(columns=columns, filter=self.filter, batch_size=batch_rows,
                                             use_threads=True).to_batches()
                for batch in batches:
                    if batch.num_rows:
                        yield file, batch
            except (pa.ArrowException, OSError) as err:
                raise PPNetError(f"{file}: cannot read ({one_line(err)})") from None

    def nonempty(self) -> "Split":
        """The same rows without the files the filter leaves empty (e.g. the validation date's)."""
        return replace(self, files=tuple(f for f in self.files
                                         if pds.dataset(f, format="parquet").count_rows(filter=self.filter)))

    def shard(self, index: int, count: int) -> "Split":
        """Worker ``index`` of ``count``: every ``count``-th file, or every ``count``-th row group
        (over all files in order) when there are fewer files than workers.

        Deterministic and disjoint: together the shards cover every row exactly once.
        """
        if count == 1:
            return self
        if len(self.files) >= count:
            return replace(self, files=self.files[index::count],
                           description=f"{self.description} [files {index}::{count}]")
        pieces = [(file, group) for file in self.files for group in range(pq.ParquetFile(file).num_row_groups)]
        mine = pieces[index::count]
        files = tuple(dict.fromkeys(file for file, _ in mine))
        return replace(self, files=files, description=f"{self.description} [row groups {index}::{count}]",
                       row_groups=tuple((f, tuple(g for file, g in mine if file == f)) for f in files))


def make_splits(config: Config, data: str | Path, valid: str | Path | None) -> tuple[Split, Split]:
    """Train and validation splits: ``--valid`` files, or the last ``valid_last`` values of the split column."""
    train_files = tuple(resolve_files(data))
    if valid is not None:
        return Split(train_files, None, str(data)), Split(tuple(resolve_files(valid)), None, str(valid))
    column = config.data.split_column
    values: set = set()
    first: tuple[Path, pa.DataType] | None = None  # the first file and its split column's type
    for file in train_files:
        if column not in read_schema(file).names:
            raise PPNetError(f"{file}: split column {column!r} is missing; pass --valid or set data.split_column")
        try:
            split_values = pq.read_table(file, columns=[column]).column(0)
        except (pa.ArrowException, OSError) as err:
            raise PPNetError(f"{file}: cannot read column {column!r} ({one_line(err)})") from None
        if split_values.null_count:  # such rows would belong to neither split
            raise PPNetError(f"{file}: split column {column!r} has {split_values.null_count} null value(s); "
                             "every row needs one to go to training or validation")
        first = first or (file, split_values.type)
        if _comparable(split_values.type) != _comparable(first[1]):
            raise PPNetError(f"{file}: split column {column!r} is {split_values.type}, but {first[0]} has it as "
                             f"{first[1]}; use one type in every file")
        values.update(pc.unique(split_values).to_pylist())
    if len(values) <= config.data.valid_last:
        raise PPNetError(f"{data}: split column {column!r} has {len(values)} distinct value(s); "
                         f"need more than data.valid_last={config.data.valid_last} to keep some for training")
    cutoff = sorted(values)[-config.data.valid_last]
    field = pc.field(column)
    return (Split(train_files, field < cutoff, f"{data} [{column} < {cutoff}]"),
            Split(train_files, field >= cutoff, f"{data} [{column} >= {cutoff}]"))


def _comparable(arrow_type: pa.DataType) -> str:
    """Split values of types with the same answer here can be ordered against each other."""
    if pa.types.is_dictionary(arrow_type):
        return _comparable(arrow_type.value_type)
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "number"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_timestamp(arrow_type):  # any unit; values compare as datetimes
        return f"timestamp {arrow_type.tz}"
    return "date" if pa.types.is_date(arrow_type) else str(arrow_type)


def check_labels(split: Split, label: str, need_both_classes: bool = False) -> int:
    """Count rows, failing on null or non-0/1 labels with the file and the number of bad rows.

    ``need_both_classes`` (validation and evaluation data): all-click or all-non-click data has
    no AUC, which is reported before any training or scoring rather than as a NaN at the end.
    """
    rows: dict[Path, list[int]] = {}
    positives = 0
    for file, batch in split.batches([label]):
        column = batch.column(0)
        if column_kind(column.type) not in (INT, FLOAT):
            raise PPNetError(f"{file}: label column {label!r} has type {column.type}; expected 0/1 integers or floats")
        values = column.drop_null().cast(pa.float64())
        bad = column.null_count + (pc.sum(pc.invert(pc.is_in(values, pa.array([0.0, 1.0])))).as_py() or 0)
        counts = rows.setdefault(file, [0, 0])
        counts[0] += batch.num_rows
        counts[1] += bad
        positives += pc.sum(pc.equal(values, 1.0)).as_py() or 0
    for file, (_, bad) in rows.items():
        if bad:
            raise PPNetError(f"{file}: label column {label!r} has {bad} null or non-0/1 value(s); expected 0 or 1")
    total = sum(n for n, _ in rows.values())
    if total == 0:
        raise PPNetError(f"{split.description}: no rows")
    if need_both_classes and positives in (0, total):
        raise PPNetError(f"{split.description}: every {label!r} is {int(positives > 0)} ({total} rows); AUC is "
                         "undefined with a single class, use data with both clicks and non-clicks")
    return total


def to_arrays(batch: pa.RecordBatch, kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """Arrow columns → numpy arrays of the model's input dtypes, with nulls filled.

    Null ids become -1 / "" (out of vocabulary); null numerics become NaN, which the model
    replaces by the training mean.
    """
    arrays = {}
    for name, kind in kinds.items():
        column = batch.column(name)
        if kind == INT:
            arrays[name] = column.cast(pa.int64()).fill_null(NULL_INT_ID).to_numpy()
        elif kind == STRING:
            column = column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column
            arrays[name] = column.fill_null(NULL_STRING_ID).to_numpy(zero_copy_only=False).astype(object)
        else:
            arrays[name] = column.cast(pa.float32()).to_numpy(zero_copy_only=False)
    return arrays


def _take(arrays: dict[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in arrays.items()}


def iter_batches(split: Split, kinds: dict[str, str], label: str, batch_size: int,
                 shuffle_buffer: int = 0, seed: int = 0) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(features, labels) numpy batches; with ``shuffle_buffer`` rows shuffled block-wise.

    Shuffling fills a buffer of ``shuffle_buffer`` rows from files visited in a seeded random
    order, permutes it and emits whole batches, carrying the remainder into the next buffer.
    """
    rng = np.random.default_rng(seed)
    files = list(split.files)
    if shuffle_buffer:
        rng.shuffle(files)
    source = replace(split, files=tuple(files))
    columns = [*kinds, label]
    read_rows = max(batch_size, min(shuffle_buffer or batch_size, 65536))
    pending: list[dict[str, np.ndarray]] = []
    for _, batch in source.batches(columns, read_rows):
        arrays = to_arrays(batch, kinds)
        arrays[label] = batch.column(label).cast(pa.float32()).to_numpy(zero_copy_only=False)
        pending.append(arrays)
        if sum(len(p[label]) for p in pending) >= max(shuffle_buffer, batch_size):
            pending = yield from _emit_block(pending, label, batch_size, rng if shuffle_buffer else None, last=False)
    if pending:
        yield from _emit_block(pending, label, batch_size, rng if shuffle_buffer else None, last=True)


def _merge(pieces: list[dict[str, np.ndarray]], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """The pieces as one block of rows (permuted with ``rng``), built column by column and emptying
    ``pieces`` as it goes: about one copy of the shuffle buffer in memory, not three."""
    rows = sum(len(next(iter(piece.values()))) for piece in pieces)
    order = rng.permutation(rows) if rng is not None else None
    block = {}
    for name in list(pieces[0]):
        column = np.concatenate([piece.pop(name) for piece in pieces])
        block[name] = column[order] if order is not None else column
    pieces.clear()
    return block


def _emit_block(pending: list[dict[str, np.ndarray]], label: str, batch_size: int,
                rng: np.random.Generator | None, last: bool):
    """Yield the buffered rows (permuted with ``rng``) as batches; return the rows that do not fill
    a whole batch, to carry into the next buffer (``last``: emit them as a final short batch)."""
    block = _merge(pending, rng)
    rows = len(block[label])
    full = rows if last else rows - rows % batch_size
    for start in range(0, full, batch_size):
        out = _take(block, slice(start, start + batch_size))
        yield out, out.pop(label)
    # A copy, not a view: a view would keep this whole block alive while the next one fills.
    return [{name: column[full:].copy() for name, column in block.items()}] if full < rows else []


def input_specs(kinds: dict[str, str]) -> dict:
    """One ``[batch]`` ``tf.TensorSpec`` per raw input column: the model's and the export's signature."""
    import tensorflow as tf

    dtypes = {INT: tf.int64, STRING: tf.string, FLOAT: tf.float32}
    return {name: tf.TensorSpec([None], dtypes[kind], name=name) for name, kind in kinds.items()}


class EpochCursor:
    """Where the next pass over the training data starts: its epoch and batches to skip.

    Each pass over the dataset is one epoch with its own shuffle order (seed + epoch). After a
    crash, training resumes mid-epoch: the cursor is moved to the backed-up (epoch, step) so the
    resumed epoch replays the same order and skips the batches already trained on.
    """

    def __init__(self) -> None:
        self.epoch, self.skip = 0, 0

    def move_to(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def take(self) -> tuple[int, int]:
        """(epoch, batches to skip) for the pass that starts now; advances to the next epoch."""
        position = (self.epoch, self.skip)
        self.epoch, self.skip = self.epoch + 1, 0
        return position


def make_dataset(split: Split, kinds: dict[str, str], label: str, batch_size: int,
                 shuffle_buffer: int = 0, seed: int = 0, cursor: EpochCursor | None = None,
                 rows: int | None = None, repeat: bool = False):
    """A ``tf.data.Dataset`` of (features, labels) batches; a new shuffle order every epoch.

    With ``rows`` (the split's row count) the dataset declares its number of batches, which gives
    Keras a complete progress bar and lets ``BackupAndRestore`` resume mid-epoch. ``repeat``
    streams pass after pass (each reshuffled), for a fixed number of steps per epoch.
    """
    import tensorflow as tf

    cursor = cursor or EpochCursor()
    signature = (input_specs(kinds), tf.TensorSpec([None], tf.float32, name=label))

    def generate():
        epoch, skip = cursor.take()
        batches = iter_batches(split, kinds, label, batch_size, shuffle_buffer, seed + epoch)
        yield from itertools.islice(batches, skip, None)

    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if rows is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-rows // batch_size)))
    return (dataset.repeat() if repeat else dataset).prefetch(tf.data.AUTOTUNE)


def write_tfrecord_shards(split: Split, kinds: dict[str, str], label: str, batch_size: int, count: int,
                          directory: Path, seed: int = 0) -> list[Path]:
    """Each of ``count`` workers' shards of ``split`` as a TFRecord file of whole, shuffled batches.

    Parameter-server workers are plain TensorFlow servers: they cannot run this module's Python
    parquet reader, so the chief streams each shard once into a format ``tf.data`` reads natively
    (one ``tf.train.Example`` per batch, each feature a list of ``batch_size`` values).
    """
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        paths.append(directory / f"shard-{index:05d}-of-{count:05d}.tfrecord")
        with tf.io.TFRecordWriter(str(paths[-1])) as writer:
            for features, labels in iter_batches(split.shard(index, count), kinds, label, batch_size,
                                                 shuffle_buffer=65536, seed=seed + index):
                writer.write(to_example({**features, label: labels}).SerializeToString())
    return paths


def to_example(columns: dict[str, np.ndarray]):
    """Columns as one ``tf.Example``, each feature the list of its column's values: a whole batch for
    the parameter-server shards, one row for a ``serve_examples`` request."""
    import tensorflow as tf

    def feature(values: np.ndarray) -> tf.train.Feature:
        if values.dtype.kind in "OUS":  # strings (object, unicode or bytes arrays)
            return tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v if isinstance(v, bytes) else str(v).encode() for v in values]))
        if np.issubdtype(values.dtype, np.integer):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    return tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in columns.items()}))


def tfrecord_dataset(path: str, kinds: dict[str, str], label: str):
    """Endless (features, labels) batches from a shard written by ``write_tfrecord_shards``; pure TF."""
    import tensorflow as tf

    specs = {**input_specs(kinds), label: tf.TensorSpec([None], tf.float32)}
    parse = {name: tf.io.FixedLenSequenceFeature([], spec.dtype, allow_missing=True) for name, spec in specs.items()}

    def split_label(record):
        columns = tf.io.parse_single_example(record, parse)
        return columns, columns.pop(label)

    return (tf.data.TFRecordDataset(path).shuffle(256).repeat()
            .map(split_label, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
