"""Column kinds of the raw inputs and the checks that parquet files carry them (no TensorFlow).

Which files a path names, what each arrow column type is as a model input (int64 ids, string ids,
float32 numerics), whether every file's schema holds the config's columns with usable types, and
arrow columns → numpy arrays of those kinds. Files are opened here for their schemas (footers)
only; ``to_arrays`` converts the record batches that ``split.Split.batches`` streams.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ppnet.config import Config
from ppnet.errors import PPNetError

# Column kinds of the raw inputs, as they appear in the model's serving signature.
INT, STRING, FLOAT = "int64", "string", "float32"
NULL_INT_ID = -1  # nulls in integer id columns: never in a vocabulary, so they go to OOV
NULL_STRING_ID = ""  # nulls in string id columns


def resolve_files(path: str | Path) -> list[Path]:
    """A parquet file, a directory of them (recursive) or a glob → sorted list of files.

    Under a directory, names starting with ``.`` or ``_`` are skipped, files and directories alike
    (temporary and marker files: ``.NAME.tmp-PID`` of an interrupted write, ``_SUCCESS``,
    ``_temporary``; pyarrow's datasets skip the same), and symlinked directories are followed
    (each real directory once).
    """
    text = str(path)
    p = Path(text)
    if p.is_dir():
        files = sorted(parquet_files_under(p))
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
    if not files:
        raise PPNetError(f"{text}: no parquet files found (expected a .parquet file, a directory of them, or a glob)")
    return files


def parquet_files_under(directory: Path) -> list[Path]:
    """Every ``*.parquet`` file under ``directory`` (see ``resolve_files`` for what is skipped)."""
    files, seen = [], set()
    for root, dirs, names in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop, or a directory linked twice
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(HIDDEN)]
        files += [Path(root, n) for n in names if n.endswith(".parquet") and not n.startswith(HIDDEN)]
    return [f for f in files if f.is_file()]


HIDDEN = (".", "_")


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
        for column in [*config.target_columns, config.data.user_column, *(f.name for f in config.features)]:
            if column not in schema.names:
                raise PPNetError(f"{file}: column {column!r} is missing (the config expects it)")
        check_user_column(file, schema, config.data.user_column)
        for column in config.target_columns:
            if column_kind(schema.field(column).type) not in (INT, FLOAT):
                role = "label" if column in config.task_names else "mask"
                raise PPNetError(
                    f"{file}: {role} column {column!r} has type {schema.field(column).type}; "
                    "expected 0/1 integers or floats"
                )
        for feature in config.features:
            kind = column_kind(schema.field(feature.name).type)
            expected = (INT, FLOAT) if feature.kind == "numeric" else (INT, STRING)
            if kind not in expected:
                raise PPNetError(
                    f"{file}: column {feature.name!r} has type {schema.field(feature.name).type}; "
                    f"a {feature.kind} feature expects {' or '.join(expected)}"
                )
            kind = FLOAT if feature.kind == "numeric" else kind
            if kinds.setdefault(feature.name, kind) != kind:
                raise PPNetError(
                    f"{file}: column {feature.name!r} is {kind} here but {kinds[feature.name]} "
                    f"in {files[0]}; every file must store it with one type"
                )
    return kinds


def check_user_column(file: Path, schema: pa.Schema, column: str) -> None:
    """gAUC groups rows by this column, so it must hold ids (int or string), not floats or lists."""
    arrow_type = schema.field(column).type
    if not pa.types.is_integer(arrow_type) and column_kind(arrow_type) != STRING:
        raise PPNetError(f"{file}: user column {column!r} has type {arrow_type}; expected int or string user ids")


def read_schema(file: Path) -> pa.Schema:
    """The file's schema; a column name used twice is refused (which column would be meant?)."""
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowException, OSError) as err:
        raise PPNetError(f"{file}: not a readable parquet file ({one_line(err)})") from None
    twice = sorted({name for name in schema.names if schema.names.count(name) > 1})
    if twice:
        raise PPNetError(f"{file}: column name(s) {twice} appear more than once; expected unique column names")
    return schema


def fingerprint(files: list[Path]) -> list[dict]:
    """What identifies the input: each file's path, size, modification time and row count (from
    its parquet footer: cheap at any size). A resumed run compares it with its own."""
    found = []
    for file in dict.fromkeys(files):
        try:
            stat, rows = file.stat(), pq.ParquetFile(file).metadata.num_rows
        except (pa.ArrowException, OSError) as err:
            raise PPNetError(f"{file}: not a readable parquet file ({one_line(err)})") from None
        found.append({"path": str(file), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "rows": rows})
    return found


def one_line(err: BaseException) -> str:
    """An arrow error message on one line (arrow's messages often span several)."""
    return " ".join(str(err).split())


def to_arrays(batch: pa.RecordBatch, kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """Arrow columns → numpy arrays of the model's input dtypes, with nulls filled.

    Null ids become -1 / "" (out of vocabulary, unless ``""`` is itself a frequent value of the
    column, whose row nulls then share); null numerics become NaN, which the model replaces by the
    training mean.
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
            # safe=False: an integer count above 2**24 rounds to the nearest float32, as the model
            # would see it anyway, instead of pyarrow refusing the cast (and the whole run).
            arrays[name] = column.cast(pa.float32(), safe=False).to_numpy(zero_copy_only=False)
    return arrays
