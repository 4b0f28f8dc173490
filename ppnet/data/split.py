"""Which rows: a ``Split`` of parquet files streamed record batch by record batch, the train/valid
split, a worker's shard, and the label check over a split's rows (no TensorFlow).

Files are read record batch by record batch with pyarrow (only the needed columns); rows never
all sit in memory at once, so peak memory is bounded by the consumer (the shuffle buffer), not by
the log size.
"""

from __future__ import annotations

import datetime
import functools
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from ppnet.config import Config, Task, target_columns
from ppnet.data.schema import FLOAT, INT, column_kind, one_line, read_schema, resolve_files, to_arrays
from ppnet.errors import PPNetError

# Split-column values JSON cannot hold, written as ISO text and read back by type name: (type,
# parser), subclasses first (isinstance). pyarrow gives a timestamp[ns] column's values as pandas
# Timestamps (a datetime subclass), whose nanoseconds only pandas parses back.
ISO_TYPES: dict[str, tuple[type, Callable[[str], Any]]] = {
    "timestamp": (pd.Timestamp, pd.Timestamp),
    "datetime": (datetime.datetime, datetime.datetime.fromisoformat),
    "date": (datetime.date, datetime.date.fromisoformat),
}


@dataclass(frozen=True)
class Split:
    """A set of parquet files, an optional row rule ``(column, "<" or ">=", value)``, e.g.
    ``("date", ">=", 20220503)``, and, for a worker's shard of fewer files than workers, the row
    groups of each file it reads."""

    files: tuple[Path, ...]
    where: tuple[str, str, Any] | None = None
    description: str = ""
    row_groups: tuple[tuple[Path, tuple[int, ...]], ...] | None = None

    @property
    def filter(self) -> pc.Expression | None:
        """``where`` as the pyarrow expression the readers push down."""
        if self.where is None:
            return None
        column, op, value = self.where
        return pc.field(column) < value if op == "<" else pc.field(column) >= value

    def to_json(self) -> dict:
        """The rows as JSON (absolute paths, the rule): what a run records it trained and validated
        on, so that its export can be paired with its validation rows and warn about its training rows."""
        where = None
        if self.where:
            column, op, value = self.where
            kind = next((name for name, (cls, _) in ISO_TYPES.items() if isinstance(value, cls)), None)
            where = {"column": column, "op": op, "value": value.isoformat() if kind else value, "type": kind}
        return {"files": [str(f.resolve()) for f in self.files], "where": where, "description": self.description}

    @classmethod
    def from_json(cls, record: dict) -> Split:
        """The split ``to_json`` wrote."""
        where = record["where"]
        if where:
            value = ISO_TYPES[where["type"]][1](where["value"]) if where["type"] else where["value"]
            where = (where["column"], where["op"], value)
        return cls(tuple(Path(f) for f in record["files"]), where, record["description"])

    def overlap(self, other: Split) -> int:
        """How many rows this split and ``other`` both hold: in the files both read, the rows both
        rules keep (e.g. the run's training rows among those ``ppnet evaluate`` or the notebook
        scores). Row groups of a worker's shard are not considered."""
        mine = {f.resolve() for f in self.files}
        rules = [rule for rule in (self.filter, other.filter) if rule is not None]
        both = functools.reduce(operator.and_, rules) if rules else None
        return sum(pds.dataset(f, format="parquet").count_rows(filter=both) for f in other.files if f.resolve() in mine)

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
                    batches = source.scanner(
                        columns=columns, filter=self.filter, batch_size=batch_rows, use_threads=True
                    ).to_batches()
                for batch in batches:
                    if batch.num_rows:
                        yield file, batch
            except (pa.ArrowException, OSError) as err:
                raise PPNetError(f"{file}: cannot read ({one_line(err)})") from None

    def first_rows(self, kinds: dict[str, str], rows: int) -> dict[str, np.ndarray]:
        """The split's first ``rows`` rows (fewer if it has fewer) as model inputs: real rows for the
        export's warm-up requests, read without streaming the rest of the split. No rows, or a
        column that no longer converts to its kind (a file rewritten since), is a ``PPNetError``."""
        parts, found = [], 0
        for file, batch in self.batches(list(kinds), rows):
            try:
                parts.append(to_arrays(batch, kinds))
            except pa.ArrowException as err:
                raise PPNetError(f"{file}: cannot read its rows as the model's inputs ({one_line(err)})") from None
            found += batch.num_rows
            if found >= rows:
                break
        if not parts:
            raise PPNetError(f"{self.description}: no rows")
        return {name: np.concatenate([part[name] for part in parts])[:rows] for name in kinds}

    def nonempty(self) -> Split:
        """The same rows without the files the filter leaves empty (e.g. the validation date's)."""
        return replace(
            self, files=tuple(f for f in self.files if pds.dataset(f, format="parquet").count_rows(filter=self.filter))
        )

    def shard(self, index: int, count: int) -> Split:
        """Worker ``index`` of ``count``: every ``count``-th file, or every ``count``-th row group
        (over all files in order) when there are fewer files than workers.

        Deterministic and disjoint: together the shards cover every row exactly once.
        """
        if count == 1:
            return self
        if len(self.files) >= count:
            return replace(
                self, files=self.files[index::count], description=f"{self.description} [files {index}::{count}]"
            )
        pieces = [(file, group) for file in self.files for group in range(pq.ParquetFile(file).num_row_groups)]
        mine = pieces[index::count]
        files = tuple(dict.fromkeys(file for file, _ in mine))
        return replace(
            self,
            files=files,
            description=f"{self.description} [row groups {index}::{count}]",
            row_groups=tuple((f, tuple(g for file, g in mine if file == f)) for f in files),
        )


def holds_out(config: Config, valid: str | Path | None) -> bool:
    """Whether a run has validation rows: ``--valid`` files, or ``data.valid_last`` above 0."""
    return valid is not None or config.data.valid_last > 0


def make_splits(config: Config, data: str | Path, valid: str | Path | None) -> tuple[Split, Split | None]:
    """Train and validation splits: ``--valid`` files, or the last ``valid_last`` values of the split
    column; no validation split when ``valid_last`` is 0 and there is no ``--valid``."""
    train_files = tuple(resolve_files(data))
    if valid is not None:
        return Split(train_files, None, str(data)), Split(tuple(resolve_files(valid)), None, str(valid))
    if not holds_out(config, valid):
        return Split(train_files, None, str(data)), None
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
        nan = pc.sum(pc.is_nan(split_values)).as_py() or 0 if pa.types.is_floating(split_values.type) else 0
        if split_values.null_count or nan:  # such rows would belong to neither split
            raise PPNetError(
                f"{file}: split column {column!r} has {split_values.null_count + nan} null or NaN value(s); "
                "every row needs one to go to training or validation"
            )
        first = first or (file, split_values.type)
        if _comparable(split_values.type) != _comparable(first[1]):
            raise PPNetError(
                f"{file}: split column {column!r} is {split_values.type}, but {first[0]} has it as "
                f"{first[1]}; use one type in every file"
            )
        values.update(pc.unique(split_values).to_pylist())
    if len(values) <= config.data.valid_last:
        raise PPNetError(
            f"{data}: split column {column!r} has {len(values)} distinct value(s); "
            f"need more than data.valid_last={config.data.valid_last} to keep some for training"
        )
    cutoff = sorted(values)[-config.data.valid_last]
    return (
        Split(train_files, (column, "<", cutoff), f"{data} [{column} < {cutoff}]"),
        Split(train_files, (column, ">=", cutoff), f"{data} [{column} >= {cutoff}]"),
    )


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


def check_labels(split: Split, tasks: list[Task], need_both_classes: bool = False) -> int:
    """Count rows, failing on null or non-0/1 labels and masks with the file and the number of bad rows.

    ``need_both_classes`` (validation and evaluation data): a task whose kept rows (mask 1) are all
    positive or all negative has no AUC, which is reported before any training or scoring rather
    than as a NaN at the end.
    """
    columns = target_columns(tasks)
    rows: dict[Path, int] = {}
    kept, positives = [0] * len(tasks), [0] * len(tasks)
    for file, batch in split.batches(columns):
        values = {
            name: _zero_one(file, batch, name, "mask" if name not in [t.name for t in tasks] else "label")
            for name in columns
        }
        rows[file] = rows.get(file, 0) + batch.num_rows
        for i, task in enumerate(tasks):
            mask = values[task.mask] if task.mask else pa.array([True] * batch.num_rows)
            kept[i] += pc.sum(mask.cast(pa.int64())).as_py() or 0
            positives[i] += pc.sum(pc.and_(mask, values[task.name])).as_py() or 0
    total = sum(rows.values())
    if total == 0:
        raise PPNetError(f"{split.description}: no rows")
    for task, n, p in zip(tasks, kept, positives):
        if need_both_classes and p in (0, n):
            where = f" of the {n} rows where {task.mask!r} is 1" if task.mask else f" ({n} rows)"
            raise PPNetError(
                f"{split.description}: every {task.name!r}{where} is {int(p > 0)}; AUC is undefined with a "
                "single class, use data with both positives and negatives"
            )
    return total


def _zero_one(file: Path, batch: pa.RecordBatch, name: str, role: str) -> pa.Array:
    """Column ``name`` of ``batch`` as booleans, failing unless every value is 0 or 1."""
    column = batch.column(name)
    if column_kind(column.type) not in (INT, FLOAT):
        raise PPNetError(f"{file}: {role} column {name!r} has type {column.type}; expected 0/1 integers or floats")
    values = column.cast(pa.float64())
    bad = column.null_count + (pc.sum(pc.invert(pc.is_in(values.drop_null(), pa.array([0.0, 1.0])))).as_py() or 0)
    if bad:
        raise PPNetError(f"{file}: {role} column {name!r} has {bad} null or non-0/1 value(s); expected 0 or 1")
    return pc.equal(values, 1.0)
