"""KuaiRand-Pure (https://kuairand.com, CC BY-SA 4.0) → one parquet click log per day.

The official log CSVs are streamed record batch by record batch (the full download has 10^7+
rows and must never sit in memory whole); the small user and video side tables are read whole
and joined onto each batch by id, keeping the log's row order. Output: ``OUT/part-YYYYMMDD.parquet``
with the 19 official log columns, ``hour`` (from ``hourmin``), the user table's columns and the
video table's columns (``author_id`` among them), all under their official names.

Label: ``is_click``. Leakage: ``is_like, is_follow, is_comment, is_forward, is_hate, long_view,
play_time_ms, profile_stay_time, comment_stay_time, is_profile_enter`` happen *after* the
exposure; they are kept only as extra labels and must never be used as input features.
``duration_ms`` is the video length (known before the exposure), so it is a legitimate feature.

Log rows whose video or user is absent from a side table keep null side columns (the model maps
null ids to OOV); ``missing_video="drop"`` drops the rows without a video instead.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ppnet.data.schema import one_line
from ppnet.errors import PPNetError
from ppnet.files import PREPARED, atomic_directory, prepared_by_ppnet

log = logging.getLogger(__name__)

# Official log columns with fixed types: type inference per block could drift between blocks
# and files. Durations are float64 so that "123" and "123.0" both parse.
LOG_TYPES: dict[str, pa.DataType] = {
    "user_id": pa.int64(),
    "video_id": pa.int64(),
    "date": pa.int64(),
    "hourmin": pa.int64(),
    "time_ms": pa.int64(),
    "is_click": pa.int64(),
    "is_like": pa.int64(),
    "is_follow": pa.int64(),
    "is_comment": pa.int64(),
    "is_forward": pa.int64(),
    "is_hate": pa.int64(),
    "long_view": pa.int64(),
    "play_time_ms": pa.float64(),
    "duration_ms": pa.float64(),
    "profile_stay_time": pa.float64(),
    "comment_stay_time": pa.float64(),
    "is_profile_enter": pa.int64(),
    "is_rand": pa.int64(),
    "tab": pa.int64(),
}
# Post-exposure outcomes: extra labels only, never features (see the module docstring).
LEAKY_LABELS = (
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
)
USER_KEY, VIDEO_KEY = "user_id", "video_id"
USER_REQUIRED = (USER_KEY,)
VIDEO_REQUIRED = (VIDEO_KEY, "author_id")
MISSING_VIDEO_MODES = ("keep", "drop")


def prepare_kuairand(
    logs: list[Path | str],
    users: Path | str,
    videos: Path | str,
    out: Path | str,
    *,
    missing_video: str = "keep",
    overwrite: bool = False,
    block_size: int = 1 << 22,
) -> dict:
    """Convert KuaiRand-Pure log CSVs (in the order given) + side tables into ``out``.

    Everything is written into a temporary sibling directory first and renamed into place at the
    end, so ``out`` is either complete or untouched. ``block_size`` (bytes per CSV block) bounds
    the memory used by one log batch.
    """
    if missing_video not in MISSING_VIDEO_MODES:
        raise PPNetError(f"missing_video: expected one of {MISSING_VIDEO_MODES}, got {missing_video!r}")
    if not logs:
        raise PPNetError("logs: expected at least one KuaiRand log CSV, got none")
    out = Path(out)
    user_table = _read_side_table(Path(users), USER_REQUIRED, USER_KEY)
    video_table = _read_side_table(Path(videos), VIDEO_REQUIRED, VIDEO_KEY)
    schema = _output_schema(user_table, video_table, Path(users), Path(videos))
    with atomic_directory(out, overwrite, "prepared log", ours=prepared_by_ppnet) as tmp:
        report = _convert([Path(p) for p in logs], user_table, video_table, schema, tmp, missing_video, block_size)
        (tmp / PREPARED).write_text(
            json.dumps({"prepared_by": "ppnet prepare kuairand", "logs": [str(p) for p in logs]})
        )
    log.info(
        "kuairand: %d rows, %d files (%s..%s) → %s; missing videos %d, missing users %d, dropped %d",
        report["rows"],
        len(report["files"]),
        report["dates"][0] if report["dates"] else "-",
        report["dates"][-1] if report["dates"] else "-",
        out,
        report["missing_videos"],
        report["missing_users"],
        report["dropped_rows"],
    )
    return report


def _check_columns(path: Path, names: list[str], required: tuple[str, ...] | list[str]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise PPNetError(
            f"{path}: missing column(s) {', '.join(missing)}; expected columns include {', '.join(required)}"
        )


def _read_header(path: Path) -> list[str]:
    """The CSV header alone, to name missing columns before pyarrow fails less clearly."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError) as e:
        raise PPNetError(f"{path}: cannot read CSV file ({one_line(e)})") from e


def _read_side_table(path: Path, required: tuple[str, ...], key: str) -> pa.Table:
    """Read a whole side table with unique int64 ``key``; types are inferred over the whole file.

    One block covering the whole file makes inference see every row (side tables are small), so
    the types are stable and later give every output batch the same schema, even all-null ones.
    """
    _check_columns(path, _read_header(path), required)
    read = pcsv.ReadOptions(block_size=max(path.stat().st_size + 1, 1 << 16))
    convert = pcsv.ConvertOptions(column_types={c: pa.int64() for c in required})
    try:
        table = pcsv.read_csv(path, read_options=read, convert_options=convert)
    except (OSError, pa.ArrowInvalid) as e:
        raise PPNetError(f"{path}: cannot parse CSV, expected int64 in {', '.join(required)} ({one_line(e)})") from e
    duplicates = table.num_rows - pc.count_distinct(table[key], mode="all").as_py()
    if duplicates:
        raise PPNetError(f"{path}: column {key} has {duplicates} duplicate value(s); expected one row per {key}")
    return _whole_floats_as_int(table)


def _whole_floats_as_int(table: pa.Table) -> pa.Table:
    """Float columns holding only whole numbers within int64's range → nullable int64.

    CSV gives codes with gaps (``onehot_feat12``, ``music_type``) a float type only because of
    their nulls; as int64 they can be vocabulary features like every other code.
    """
    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type):
            values = table[field.name].drop_null()
            whole = pc.all(pc.equal(values, pc.floor(values))).as_py() is not False
            in_range = pc.all(pc.less(pc.abs(values), 2.0**63)).as_py() is not False  # NaN/inf: never
            if whole and in_range:
                table = table.set_column(i, field.name, table[field.name].cast(pa.int64()))
    return table


def _output_schema(users: pa.Table, videos: pa.Table, users_path: Path, videos_path: Path) -> pa.Schema:
    """Log columns, ``hour``, then side columns (minus join keys), types fixed from the sources."""
    fields = [pa.field(n, t) for n, t in LOG_TYPES.items()] + [pa.field("hour", pa.int64())]
    for path, table, key in ((users_path, users, USER_KEY), (videos_path, videos, VIDEO_KEY)):
        taken = {f.name for f in fields}
        for field in table.schema:
            if field.name == key:
                continue
            if field.name in taken:
                raise PPNetError(
                    f"{path}: column {field.name} clashes with a log or side column; expected distinct column names"
                )
            fields.append(field)
    return pa.schema(fields)


def _convert(
    logs: list[Path],
    users: pa.Table,
    videos: pa.Table,
    schema: pa.Schema,
    tmp: Path,
    missing_video: str,
    block_size: int,
) -> dict:
    """Stream every log batch through the join into one ParquetWriter per date."""
    writers: dict[int, pq.ParquetWriter] = {}
    counts = {"rows": 0, "missing_videos": 0, "missing_users": 0, "dropped_rows": 0}
    try:
        for path in logs:
            for batch in _log_batches(path, block_size):
                table, user_rows, video_rows = _join(batch, users, videos, schema)
                counts["missing_users"] += user_rows.null_count
                counts["missing_videos"] += video_rows.null_count
                if missing_video == "drop" and video_rows.null_count:
                    counts["dropped_rows"] += video_rows.null_count
                    table = table.filter(pc.is_valid(video_rows))
                counts["rows"] += table.num_rows
                _write_by_date(table, writers, schema, tmp)
    finally:
        for writer in writers.values():
            writer.close()
    dates = sorted(writers)
    return {**counts, "files": [_file_name(d) for d in dates], "dates": dates}


def _log_batches(path: Path, block_size: int) -> Iterator[pa.RecordBatch]:
    """Yield record batches of one log CSV with the fixed official columns and types."""
    _check_columns(path, _read_header(path), list(LOG_TYPES))
    read = pcsv.ReadOptions(block_size=block_size)
    convert = pcsv.ConvertOptions(column_types=LOG_TYPES, include_columns=list(LOG_TYPES))
    try:
        with pcsv.open_csv(path, read_options=read, convert_options=convert) as reader:
            for batch in reader:
                if batch["date"].null_count:
                    raise PPNetError(f"{path}: column date has empty values; expected YYYYMMDD integers on every row")
                yield batch
    except (OSError, pa.ArrowInvalid) as e:
        raise PPNetError(
            f"{path}: cannot parse log CSV, expected the official columns with numeric values ({one_line(e)})"
        ) from e


def _join(
    batch: pa.RecordBatch, users: pa.Table, videos: pa.Table, schema: pa.Schema
) -> tuple[pa.Table, pa.Array, pa.Array]:
    """Left-join one log batch with both side tables, keeping the log's row order.

    A positional lookup (``index_in`` + ``take``) instead of a hash join: it cannot reorder
    rows, and null indices give null side columns typed like the side table.
    Returns the joined table and the user / video row indices (null where the id is unknown).
    """
    user_rows = pc.index_in(batch[USER_KEY], value_set=users[USER_KEY])
    video_rows = pc.index_in(batch[VIDEO_KEY], value_set=videos[VIDEO_KEY])
    columns = {name: batch[name] for name in LOG_TYPES}
    columns["hour"] = pc.divide(batch["hourmin"], 100)  # integer division on int64
    for table, rows, key in ((users, user_rows, USER_KEY), (videos, video_rows, VIDEO_KEY)):
        picked = table.take(rows)
        for name in picked.column_names:
            if name != key:
                columns[name] = picked[name].combine_chunks()
    joined = pa.table([columns[f.name] for f in schema], schema=schema)
    return joined, user_rows, video_rows


def _file_name(date: int) -> str:
    return f"part-{date}.parquet"


def _write_by_date(table: pa.Table, writers: dict[int, pq.ParquetWriter], schema: pa.Schema, tmp: Path) -> None:
    """Append each date's rows to that date's file; logs are time-sorted but this does not rely on it."""
    for date in pc.unique(table["date"]).to_pylist():
        if date not in writers:
            writers[date] = pq.ParquetWriter(tmp / _file_name(date), schema)
        writers[date].write_table(table.filter(pc.equal(table["date"], date)))
