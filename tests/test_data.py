"""Parquet inputs: file resolution, schema checks, label checks, splits and the streaming batcher."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ppnet.config import Task, config_from_dict
from ppnet.data.pipeline import GENERATOR_CHUNK_BATCHES, EpochCursor, iter_batches, make_dataset
from ppnet.data.schema import FLOAT, INT, NULL_INT_ID, NULL_STRING_ID, STRING, input_kinds, resolve_files
from ppnet.data.split import Split, check_labels, make_splits
from ppnet.errors import PPNetError
from ppnet.stats import compute_stats
from tests.helpers import REPO, small_config


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(PPNetError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, f"error message must be one line: {message!r}"
    return message


def _copy_log(synthetic_dir: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    out = tmp_path / "log"
    shutil.copytree(synthetic_dir, out)
    return out, sorted(out.glob("*.parquet"))


def _rewrite(file: Path, change) -> None:
    pq.write_table(change(pq.read_table(file)), file)


def _replace_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def _rows(split: Split, columns: list[str]) -> pa.Table:
    batches = [batch for _, batch in split.batches(columns)]
    return pa.Table.from_batches(batches) if batches else pa.table({c: [] for c in columns})


def _simple_config(**data_section):
    """A config over an ``id`` column (int vocab), ``cat`` (string vocab), ``x`` (numeric)."""
    return config_from_dict(
        {
            "features": [{"name": "id"}, {"name": "cat"}, {"name": "x", "kind": "numeric"}],
            "model": {"name": "dnn", "personal_ids": []},
            "data": data_section,
        }
    )


def _id_log(tmp_path: Path, files: int = 3, rows_per_file: int = 837) -> tuple[Path, int]:
    """``files`` parquet files with a unique ``id`` column, ``is_click = id % 2`` and ``date`` per file."""
    out = tmp_path / "ids"
    out.mkdir()
    start = 0
    for i in range(files):
        ids = np.arange(start, start + rows_per_file + i, dtype=np.int64)  # unequal file sizes
        start = ids[-1] + 1
        pq.write_table(
            pa.table(
                {
                    "id": ids,
                    "cat": [f"c{j % 7}" for j in ids],
                    "x": ids.astype(np.float64) / 10,
                    "date": np.full(ids.size, 20220601 + i, dtype=np.int64),
                    "is_click": ids % 2,
                }
            ),
            out / f"part-{i}.parquet",
            row_group_size=200,
        )
    return out, int(start)


# --- rooms --------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["ppnet.data.schema", "ppnet.data.split", "ppnet.stats"])
def test_tf_free_rooms_do_not_import_tensorflow(module: str) -> None:
    """Schema checks, splits and statistics run without loading TensorFlow (a fresh interpreter:
    this one has TensorFlow loaded already)."""
    code = f"import sys, {module}; assert 'tensorflow' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# --- resolve_files ------------------------------------------------------------------------------


def test_resolve_file(synthetic_dir: Path) -> None:
    file = sorted(synthetic_dir.glob("*.parquet"))[3]
    assert resolve_files(file) == [file]
    assert resolve_files(str(file)) == [file]


def test_resolve_dir_is_recursive_sorted_and_parquet_only(tmp_path: Path) -> None:
    (tmp_path / "b" / "nested").mkdir(parents=True)
    for name in ["b/nested/z.parquet", "a.parquet", "b/c.parquet"]:
        pq.write_table(pa.table({"v": [1]}), tmp_path / name)
    (tmp_path / "notes.txt").write_text("not parquet")
    files = resolve_files(tmp_path)
    assert files == sorted(
        [tmp_path / "a.parquet", tmp_path / "b" / "c.parquet", tmp_path / "b" / "nested" / "z.parquet"]
    )


def test_resolve_dir_skips_hidden_and_temporary_names_and_follows_linked_directories(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for path in [
        data / "a.parquet",
        data / ".b.parquet",
        data / "_c.parquet",
        data / ".data.tmp-123" / "d.parquet",  # an interrupted write's temporary directory
        data / "_temporary" / "e.parquet",
        data / "day" / "f.parquet",
        elsewhere / "g.parquet",
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"x": [1]}), path)
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (data / "day" / "loop").symlink_to(data, target_is_directory=True)  # visited once, no endless walk
    assert [p.relative_to(data).as_posix() for p in resolve_files(data)] == [
        "a.parquet",
        "day/f.parquet",
        "linked/g.parquet",
    ]


def test_resolve_dir(synthetic_dir: Path) -> None:
    files = resolve_files(synthetic_dir)
    assert len(files) == 8 and files == sorted(files)
    assert all(f.suffix == ".parquet" and f.parent == synthetic_dir for f in files)


def test_resolve_glob(synthetic_dir: Path) -> None:
    everything = resolve_files(synthetic_dir)
    picked = resolve_files(f"{synthetic_dir}/part-2022060[1-3].parquet")
    assert picked == everything[:3]


@pytest.mark.parametrize("pattern", ["missing.parquet", "missing_dir", "*.nothing"])
def test_resolve_nothing(tmp_path: Path, pattern: str) -> None:
    path = f"{tmp_path}/{pattern}"
    message = _error(resolve_files, path)
    assert path in message and "no parquet files" in message


def test_resolve_empty_dir(tmp_path: Path) -> None:
    assert str(tmp_path) in _error(resolve_files, tmp_path)


# --- input_kinds --------------------------------------------------------------------------------


def test_input_kinds_of_synthetic_log(synthetic_dir: Path) -> None:
    config = small_config()
    kinds = input_kinds(config, resolve_files(synthetic_dir))
    assert list(kinds) == [f.name for f in config.features]
    assert kinds["user_id"] == INT and kinds["hour"] == INT
    assert kinds["user_active_degree"] == STRING and kinds["video_type"] == STRING
    # numerics are float32 whatever the file stores (follow_user_num is int64 on disk)
    assert pq.read_schema(resolve_files(synthetic_dir)[0]).field("follow_user_num").type == pa.int64()
    assert kinds["follow_user_num"] == kinds["video_duration"] == FLOAT


def test_missing_column_in_one_file_of_many(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[5], lambda t: t.drop_columns(["hour"]))
    message = _error(input_kinds, small_config(), files)
    assert str(files[5]) in message and "'hour'" in message and "missing" in message


def test_missing_label_column(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[2], lambda t: t.drop_columns(["is_click"]))
    message = _error(input_kinds, small_config(), files)
    assert str(files[2]) in message and "'is_click'" in message


def test_string_numeric_feature_in_one_file(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[3], lambda t: _replace_column(t, "video_duration", pc.cast(t["video_duration"], pa.string())))
    message = _error(input_kinds, small_config(), files)
    assert str(files[3]) in message and "'video_duration'" in message and "numeric" in message


def test_float_label_is_fine_string_label_is_not(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[1], lambda t: _replace_column(t, "is_click", pc.cast(t["is_click"], pa.float64())))
    assert input_kinds(small_config(), files)["user_id"] == INT
    _rewrite(files[6], lambda t: _replace_column(t, "is_click", pc.cast(t["is_click"], pa.string())))
    message = _error(input_kinds, small_config(), files)
    assert str(files[6]) in message and "'is_click'" in message and "string" in message


def test_unusable_feature_type(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[0], lambda t: _replace_column(t, "tab", pa.array([[int(v)] for v in t["tab"].to_pylist()])))
    message = _error(input_kinds, small_config(), files)
    assert str(files[0]) in message and "'tab'" in message


def test_feature_type_differs_between_files(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[4], lambda t: _replace_column(t, "user_id", pc.cast(t["user_id"], pa.string())))
    message = _error(input_kinds, small_config(), files)
    assert str(files[4]) in message and "'user_id'" in message
    assert STRING in message and INT in message


def test_numeric_int_and_float_files_mix(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[4], lambda t: _replace_column(t, "follow_user_num", pc.cast(t["follow_user_num"], pa.float32())))
    assert input_kinds(small_config(), files)["follow_user_num"] == FLOAT


def test_dictionary_string_column_is_a_string_input(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[4], lambda t: _replace_column(t, "video_type", pc.dictionary_encode(t["video_type"])))
    assert input_kinds(small_config(), files)["video_type"] == STRING


# --- empty and corrupt files --------------------------------------------------------------------


def test_zero_row_file(synthetic_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(resolve_files(synthetic_dir)[0]).slice(0, 0), empty)
    config = small_config()
    assert input_kinds(config, [empty])["user_id"] == INT  # the schema is fine
    assert str(empty) in _error(make_splits, config, empty, None)
    _, valid = make_splits(config, synthetic_dir, empty)
    message = _error(check_labels, valid, config.tasks)
    assert str(empty) in message and "no rows" in message


def test_zero_byte_file(tmp_path: Path) -> None:
    file = tmp_path / "zero.parquet"
    file.write_bytes(b"")
    message = _error(input_kinds, small_config(), [file])
    assert str(file) in message and "parquet" in message


def test_garbage_file(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    files[3].write_bytes(b"this is not parquet at all\n" * 100)
    message = _error(input_kinds, small_config(), files)
    assert str(files[3]) in message and "not a readable parquet file" in message
    assert str(files[3]) in _error(make_splits, small_config(), files[0].parent, None)


def test_truncated_file(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    content = files[7].read_bytes()
    files[7].write_bytes(content[: len(content) // 2])
    assert str(files[7]) in _error(input_kinds, small_config(), files)
    assert str(files[7]) in _error(make_splits, small_config(), files[0].parent, None)


def test_corrupt_data_pages_with_intact_footer(synthetic_dir: Path, tmp_path: Path) -> None:
    """The schema reads fine but the column data does not: still one PPNetError naming the file."""
    _, files = _copy_log(synthetic_dir, tmp_path)
    content = bytearray(files[2].read_bytes())
    for i in range(4, len(content) // 2):
        content[i] = (content[i] * 7 + 13) % 256
    files[2].write_bytes(bytes(content))
    config = small_config()
    assert input_kinds(config, files)  # footer intact: schema checks pass
    assert str(files[2]) in _error(make_splits, config, files[0].parent, None)
    split = Split(tuple(files), None, "log")
    kinds = input_kinds(config, files)
    message = _error(lambda: list(iter_batches(split, kinds, config.target_columns, 256)))
    assert str(files[2]) in message and "cannot read" in message


# --- check_labels -------------------------------------------------------------------------------

CLICK = [Task("is_click")]


def test_check_labels_counts_rows(synthetic_dir: Path) -> None:
    files = resolve_files(synthetic_dir)
    expected = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    assert check_labels(Split(tuple(files)), CLICK) == expected == 8000


def test_check_labels_null(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)

    def add_nulls(t: pa.Table) -> pa.Table:
        labels = t["is_click"].to_pylist()
        labels[0] = labels[5] = labels[-1] = None
        return _replace_column(t, "is_click", pa.array(labels, pa.int64()))

    _rewrite(files[4], add_nulls)
    message = _error(check_labels, Split(tuple(files)), CLICK)
    assert str(files[4]) in message and " 3 " in message and "'is_click'" in message


def test_check_labels_value_two(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)

    def add_twos(t: pa.Table) -> pa.Table:
        labels = t["is_click"].to_pylist()
        labels[1] = labels[2] = 2
        return _replace_column(t, "is_click", pa.array(labels, pa.int64()))

    _rewrite(files[6], add_twos)
    message = _error(check_labels, Split(tuple(files)), CLICK)
    assert str(files[6]) in message and " 2 " in message and str(files[5]) not in message


def test_check_labels_nan_and_fractional_floats(tmp_path: Path) -> None:
    file = tmp_path / "f.parquet"
    pq.write_table(pa.table({"is_click": [0.0, 1.0, float("nan"), 0.5, 1.0]}), file)
    message = _error(check_labels, Split((file,)), CLICK)
    assert str(file) in message and " 2 " in message


def test_check_labels_float_and_bool_labels_are_fine(tmp_path: Path) -> None:
    floats, bools = tmp_path / "f.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"is_click": [0.0, 1.0, 1.0]}), floats)
    pq.write_table(pa.table({"is_click": [True, False]}), bools)
    assert check_labels(Split((floats, bools)), CLICK) == 5


def test_check_labels_string_label(tmp_path: Path) -> None:
    file = tmp_path / "s.parquet"
    pq.write_table(pa.table({"is_click": ["0", "1", "yes"]}), file)
    message = _error(check_labels, Split((file,)), CLICK)
    assert str(file) in message and "'is_click'" in message


# --- make_splits --------------------------------------------------------------------------------


def test_split_by_last_date(synthetic_dir: Path) -> None:
    config = small_config()
    train, valid = make_splits(config, synthetic_dir, None)
    everything = pq.read_table(synthetic_dir, columns=["date"])["date"].to_numpy()
    train_dates = _rows(train, ["date"])["date"].to_numpy()
    valid_dates = _rows(valid, ["date"])["date"].to_numpy()
    assert train_dates.size + valid_dates.size == everything.size
    assert set(valid_dates) == {everything.max()}
    assert (valid_dates == everything.max()).sum() == (everything == everything.max()).sum()
    assert train_dates.max() < everything.max()
    assert check_labels(train, CLICK) == train_dates.size
    assert str(everything.max()) in valid.description


def test_split_valid_last_two(synthetic_dir: Path) -> None:
    config = small_config("data.valid_last=2")
    train, valid = make_splits(config, synthetic_dir, None)
    dates = sorted(set(pq.read_table(synthetic_dir, columns=["date"])["date"].to_pylist()))
    assert set(_rows(valid, ["date"])["date"].to_pylist()) == set(dates[-2:])
    assert set(_rows(train, ["date"])["date"].to_pylist()) == set(dates[:-2])


def test_split_with_valid_files(synthetic_dir: Path) -> None:
    files = resolve_files(synthetic_dir)
    train, valid = make_splits(small_config(), files[0], synthetic_dir)
    assert train.files == (files[0],) and valid.files == tuple(files)
    assert train.filter is None and valid.filter is None


@pytest.mark.parametrize(
    "days",
    [
        (20220502, 20220503),
        ("2022-05-02", "2022-05-03"),
        (datetime.date(2022, 5, 2), datetime.date(2022, 5, 3)),
        (datetime.datetime(2022, 5, 2, 8), datetime.datetime(2022, 5, 3, 8)),  # timestamp[us]
        (pd.Timestamp("2022-05-02 00:00:00.000000001"), pd.Timestamp("2022-05-03 00:00:00.000000001")),  # [ns]
    ],
)
def test_a_split_survives_json_with_its_rows(tmp_path: Path, days: tuple) -> None:
    pq.write_table(pa.table({"day": list(days) * 3, "x": list(range(6))}), tmp_path / "log.parquet")
    split = Split((tmp_path / "log.parquet",), ("day", ">=", days[1]), "log [day >= last]")
    again = Split.from_json(json.loads(json.dumps(split.to_json())))
    assert again == split
    whole = Split((tmp_path / "log.parquet",))
    assert again.overlap(whole) == split.overlap(whole) == whole.overlap(again) == 3
    assert again.overlap(Split((tmp_path / "log.parquet",), ("day", "<", days[1]))) == 0
    assert again.overlap(Split((tmp_path / "other.parquet",))) == 0


def test_split_column_with_single_value(synthetic_dir: Path) -> None:
    file = resolve_files(synthetic_dir)[0]
    message = _error(make_splits, small_config(), file, None)
    assert str(file) in message and "'date'" in message and "1 distinct" in message


def test_split_column_missing(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[1], lambda t: t.drop_columns(["date"]))
    message = _error(make_splits, small_config(), files[0].parent, None)
    assert str(files[1]) in message and "'date'" in message


def test_split_column_with_nulls(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(
        files[2],
        lambda t: _replace_column(
            t, "date", pa.array([None] * 5 + t["date"].to_pylist()[5:], t.schema.field("date").type)
        ),
    )
    message = _error(make_splits, small_config(), files[0].parent, None)
    assert str(files[2]) in message and "'date'" in message and "5 null" in message


def test_split_column_with_nan_is_refused_not_dropped(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    for file in files:  # a float split column, NaN in 3 rows of one file
        _rewrite(file, lambda t: _replace_column(t, "date", pc.cast(t["date"], pa.float64())))
    dates = pq.read_table(files[4])["date"].to_numpy().copy()
    dates[[0, 7, 9]] = np.nan
    _rewrite(files[4], lambda t: _replace_column(t, "date", pa.array(dates)))
    message = _error(make_splits, small_config(), files[0].parent, None)
    assert str(files[4]) in message and "3 null or NaN" in message


def test_split_column_type_differs_between_files(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[3], lambda t: _replace_column(t, "date", pc.cast(t["date"], pa.string())))
    message = _error(make_splits, small_config(), files[0].parent, None)
    assert str(files[3]) in message and str(files[0]) in message and "'date'" in message


def test_split_column_types_that_order_together_are_accepted(synthetic_dir: Path, tmp_path: Path) -> None:
    """int32 beside int64, a dictionary-encoded string beside a plain one."""
    _, files = _copy_log(synthetic_dir, tmp_path)
    for file in files:
        _rewrite(file, lambda t: _replace_column(t, "date", pc.cast(t["date"], pa.string())))
    _rewrite(files[1], lambda t: _replace_column(t, "date", pc.dictionary_encode(t["date"])))
    train, valid = make_splits(small_config(), files[0].parent, None)
    assert sum(batch.num_rows for split in (train, valid) for _, batch in split.batches(["date"])) == 8000
    _, files = _copy_log(synthetic_dir, tmp_path / "ints")
    _rewrite(files[2], lambda t: _replace_column(t, "date", pc.cast(t["date"], pa.int32())))
    make_splits(small_config(), files[0].parent, None)


def test_user_column_must_hold_ids(synthetic_dir: Path, tmp_path: Path) -> None:
    _, files = _copy_log(synthetic_dir, tmp_path)
    _rewrite(files[1], lambda t: _replace_column(t, "user_id", pa.array([[v] for v in t["user_id"].to_pylist()])))
    message = _error(input_kinds, small_config(), files)
    assert str(files[1]) in message and "user column 'user_id'" in message


# --- Split.first_rows ---------------------------------------------------------------------------


def test_first_rows_continue_into_the_next_file_and_stop_at_the_split_end(tmp_path: Path) -> None:
    directory, end = _id_log(tmp_path)
    files = tuple(resolve_files(directory))
    kinds = {"id": INT, "cat": STRING, "x": FLOAT}
    rows = Split(files, ("id", ">=", 830)).first_rows(kinds, 10)  # 7 rows in the first file, 3 in the second
    np.testing.assert_array_equal(rows["id"], np.arange(830, 840))
    assert rows["id"].dtype == np.int64 and rows["x"].dtype == np.float32 and rows["cat"][0] == "c4"
    assert list(Split(files, ("id", ">=", end - 3)).first_rows(kinds, 8)["id"]) == [end - 3, end - 2, end - 1]
    assert _error(Split(files, ("id", ">=", end), "ids [id >= end]").first_rows, kinds, 8) == "ids [id >= end]: no rows"


def test_first_rows_of_a_column_that_no_longer_converts_is_one_line(tmp_path: Path) -> None:
    directory, _ = _id_log(tmp_path, files=1)
    file = resolve_files(directory)[0]
    message = _error(Split((file,)).first_rows, {"id": INT, "cat": INT}, 8)  # cat holds strings now
    assert str(file) in message and "cannot read its rows as the model's inputs" in message


# --- iter_batches -------------------------------------------------------------------------------

KINDS = {"id": INT, "cat": STRING, "x": FLOAT}


def _epoch(split, batch_size=64, shuffle_buffer=500, seed=0):
    """(features, labels) batches of ``is_click`` alone."""
    return [(f, t["is_click"]) for f, t in iter_batches(split, KINDS, ["is_click"], batch_size, shuffle_buffer, seed)]


@pytest.mark.parametrize("batch_size,shuffle_buffer", [(64, 500), (64, 0), (100, 100), (1000, 64), (7, 10_000)])
def test_every_row_once_per_epoch(tmp_path: Path, batch_size: int, shuffle_buffer: int) -> None:
    root, total = _id_log(tmp_path)
    batches = _epoch(Split(tuple(resolve_files(root))), batch_size, shuffle_buffer, seed=3)
    ids = np.concatenate([features["id"] for features, _ in batches])
    assert np.array_equal(np.sort(ids), np.arange(total))
    sizes = [labels.size for _, labels in batches]
    assert all(size == batch_size for size in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    assert sum(sizes) == total
    for features, labels in batches:  # rows stay whole through the shuffle
        assert labels.dtype == np.float32
        assert np.array_equal(labels, (features["id"] % 2).astype(np.float32))
        assert list(features["cat"]) == [f"c{i % 7}" for i in features["id"]]
        np.testing.assert_allclose(features["x"], features["id"] / 10, rtol=1e-6)
    if shuffle_buffer:
        assert not np.array_equal(ids, np.sort(ids))
    else:
        assert np.array_equal(ids, np.arange(total))


def test_shuffle_order_depends_on_seed(tmp_path: Path) -> None:
    root, _ = _id_log(tmp_path)
    split = Split(tuple(resolve_files(root)))

    def order(seed):
        return np.concatenate([f["id"] for f, _ in _epoch(split, seed=seed)])

    assert np.array_equal(order(1), order(1))
    assert not np.array_equal(order(1), order(2))
    assert np.array_equal(np.sort(order(1)), np.sort(order(2)))


def test_iter_batches_respects_split_filter(tmp_path: Path) -> None:
    root, total = _id_log(tmp_path)
    train, valid = make_splits(_simple_config(), root, None)
    dates = {f: pq.read_table(f, columns=["id"])["id"].to_numpy() for f in resolve_files(root)}
    last = dates[sorted(dates)[-1]]
    train_ids = np.concatenate([f["id"] for f, _ in _epoch(train)])
    valid_ids = np.concatenate([f["id"] for f, _ in _epoch(valid, shuffle_buffer=0)])
    assert np.array_equal(valid_ids, last)
    assert np.array_equal(np.sort(np.concatenate([train_ids, valid_ids])), np.arange(total))


def test_null_handling(tmp_path: Path) -> None:
    file = tmp_path / "nulls.parquet"
    pq.write_table(
        pa.table(
            {
                "int_id": pa.array([5, None, 7, None], pa.int64()),
                "small_int": pa.array([1, None, 3, 4], pa.int8()),
                "str_id": pa.array(["a", None, "c", None], pa.string()),
                "large_str": pa.array([None, "b", None, "d"], pa.large_string()),
                "dict_str": pa.array(["x", None, "x", "y"]).dictionary_encode(),
                "flag": pa.array([True, None, False, True]),
                "num": pa.array([1.5, None, float("nan"), 2.0], pa.float64()),
                "int_num": pa.array([None, 2, 3, None], pa.int64()),
                "is_click": [0, 1, 0, 1],
            }
        ),
        file,
    )
    kinds = {
        "int_id": INT,
        "small_int": INT,
        "str_id": STRING,
        "large_str": STRING,
        "dict_str": STRING,
        "flag": INT,
        "num": FLOAT,
        "int_num": FLOAT,
    }
    [(features, targets)] = list(iter_batches(Split((file,)), kinds, ["is_click"], 8))
    assert features["int_id"].tolist() == [5, NULL_INT_ID, 7, NULL_INT_ID] and NULL_INT_ID == -1
    assert features["int_id"].dtype == np.int64 and features["small_int"].dtype == np.int64
    assert features["small_int"].tolist() == [1, -1, 3, 4]
    assert features["flag"].tolist() == [1, -1, 0, 1]
    assert features["str_id"].tolist() == ["a", "", "c", ""] and NULL_STRING_ID == ""
    assert features["large_str"].tolist() == ["", "b", "", "d"]
    assert features["dict_str"].tolist() == ["x", "", "x", "y"]
    assert all(isinstance(v, str) for v in features["dict_str"])
    assert features["num"].dtype == np.float32 and features["int_num"].dtype == np.float32
    np.testing.assert_array_equal(features["num"], np.array([1.5, np.nan, np.nan, 2.0], np.float32))
    np.testing.assert_array_equal(features["int_num"], np.array([np.nan, 2, 3, np.nan], np.float32))
    assert targets["is_click"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_integer_numerics_beyond_float_precision_round_instead_of_failing(tmp_path: Path) -> None:
    """Counts above 2**24 (float32) or 2**53 (float64, the statistics) round; pyarrow's default
    cast refused them and stopped training or scoring on the row that had one."""
    file = tmp_path / "big.parquet"
    big = [2**24 + 1, 2**53 + 1, None, 3]
    pq.write_table(pa.table({"fans": pa.array(big, pa.int64()), "is_click": [0, 1, 0, 1]}), file)
    [(features, _)] = list(iter_batches(Split((file,)), {"fans": FLOAT}, ["is_click"], 8))
    np.testing.assert_array_equal(features["fans"], np.array([2**24, 2**53, np.nan, 3], np.float32))
    config = config_from_dict(
        {
            "data": {"label": "is_click", "valid_last": 0},
            "model": {"name": "dnn", "personal_ids": []},
            "features": [{"name": "fans", "kind": "numeric"}],
        }
    )
    stats = compute_stats(config, Split((file,)), {"fans": FLOAT})
    assert stats.numeric["fans"][0] == pytest.approx((2**24 + 1 + 2**53 + 3) / 3)


# --- make_dataset -------------------------------------------------------------------------------


def test_make_dataset_dtypes_and_epochs(synthetic_dir: Path) -> None:
    import tensorflow as tf

    config = small_config()
    train, _ = make_splits(config, synthetic_dir, None)
    kinds = input_kinds(config, list(train.files))
    rows = check_labels(train, config.tasks)
    dataset = make_dataset(train, kinds, ["is_click"], 512, shuffle_buffer=2048, seed=5)
    expected = {INT: tf.int64, STRING: tf.string, FLOAT: tf.float32}

    def epoch():
        users, total = [], 0
        for features, targets in dataset:
            labels = targets["is_click"]
            assert set(features) == set(kinds) and set(targets) == {"is_click"}
            for name, kind in kinds.items():
                assert features[name].dtype == expected[kind], name
                assert features[name].shape == labels.shape
            assert labels.dtype == tf.float32 and labels.shape[0] <= 512
            users.append(features["user_id"].numpy())
            total += labels.shape[0]
        return np.concatenate(users), total

    first, n1 = epoch()
    second, n2 = epoch()
    assert n1 == n2 == rows
    assert np.array_equal(np.sort(first), np.sort(second))
    assert not np.array_equal(first, second)  # a new shuffle order every epoch


def test_make_dataset_serves_exactly_the_shuffled_batches_across_chunks_and_a_resumed_skip(synthetic_dir: Path) -> None:
    """The generator hands tf.data several batches at a time; what training reads is still each
    ``iter_batches`` batch, in order, the short last one included, from the cursor's skip on."""
    config = small_config()
    train, _ = make_splits(config, synthetic_dir, None)
    kinds = input_kinds(config, list(train.files))
    batch, skip = 70, 5
    expected = list(iter_batches(train, kinds, ["is_click"], batch, shuffle_buffer=1000, seed=8))[skip:]
    assert len(expected) > 2 * GENERATOR_CHUNK_BATCHES and len(expected[-1][1]["is_click"]) < batch
    cursor = EpochCursor()
    cursor.move_to(1, skip)  # epoch 1 of seed 7: iter_batches' seed 8
    served = list(make_dataset(train, kinds, ["is_click"], batch, shuffle_buffer=1000, seed=7, cursor=cursor))
    assert len(served) == len(expected)
    for (features, targets), (want_features, want_targets) in zip(served, expected, strict=True):
        np.testing.assert_array_equal(targets["is_click"].numpy(), want_targets["is_click"])
        for name, values in want_features.items():
            got = features[name].numpy()
            got = got.astype(str) if values.dtype == object else got
            np.testing.assert_array_equal(got, values, err_msg=name)
