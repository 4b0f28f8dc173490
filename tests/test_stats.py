"""Vocabularies and numeric statistics from the training split, and their save/load."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppnet.config import config_from_dict
from ppnet.data.schema import INT, STRING, input_kinds
from ppnet.data.split import Split, make_splits
from ppnet.errors import PPNetError
from ppnet.stats import Stats, compute_stats, signed_log1p
from tests.helpers import small_config


def _config(features: list[dict]):
    # No gAUC here: any column the files have serves as the (required) user column.
    return config_from_dict(
        {"features": features, "model": {"name": "dnn", "personal_ids": []}, "data": {"user_column": "is_click"}}
    )


def _write(tmp_path: Path, tables: list[pa.Table]) -> Split:
    """Each table as its own file, several row groups each, so stats merge across files and batches."""
    files = []
    for i, table in enumerate(tables):
        files.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(table, files[-1], row_group_size=max(1, table.num_rows // 3))
    return Split(tuple(files), None, str(tmp_path))


def _stats(config, split: Split) -> Stats:
    return compute_stats(config, split, input_kinds(config, list(split.files)))


def test_vocabulary_sorted_by_frequency_with_min_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = {"a": 9, "b": 4, "c": 4, "d": 6, "e": 2, "f": 1, "g": 1}
    values = np.array([v for v, n in counts.items() for _ in range(n)], dtype=object)
    rng.shuffle(values)
    values = values.tolist()
    values[3:3] = [None, None, None]  # nulls are not a vocabulary value
    ids = [hash(v) % 5 if v else None for v in values]
    half = len(values) // 2
    split = _write(
        tmp_path,
        [
            pa.table({"cat": values[:half], "id": pa.array(ids[:half], pa.int64()), "is_click": [0] * half}),
            pa.table(
                {"cat": values[half:], "id": pa.array(ids[half:], pa.int64()), "is_click": [1] * (len(values) - half)}
            ),
        ],
    )
    stats = _stats(_config([{"name": "cat", "min_count": 2}, {"name": "id"}]), split)
    kept = [v for v, n in counts.items() if n >= 2]
    assert stats.vocabularies["cat"] == sorted(kept, key=lambda v: (-counts[v], v)) == ["a", "d", "b", "c", "e"]
    id_counts = Counter(i for i in ids if i is not None)
    assert stats.vocabularies["id"] == [i for i, _ in sorted(id_counts.items(), key=lambda kv: (-kv[1], str(kv[0])))]
    assert all(isinstance(i, int) for i in stats.vocabularies["id"])
    assert stats.rows == len(values)
    assert stats.positive_rate == pytest.approx((len(values) - half) / len(values))
    assert stats.kinds == {"cat": STRING, "id": INT}


def test_vocabulary_of_dictionary_column_matches_plain(tmp_path: Path) -> None:
    values = ["x", "y", "x", None, "z", "x", "y"]
    labels = [0, 1] * 3 + [0]
    (tmp_path / "plain").mkdir()
    (tmp_path / "dict").mkdir()
    plain = _stats(
        _config([{"name": "cat"}]), _write(tmp_path / "plain", [pa.table({"cat": values, "is_click": labels})])
    )
    encoded = _stats(
        _config([{"name": "cat"}]),
        _write(tmp_path / "dict", [pa.table({"cat": pa.array(values).dictionary_encode(), "is_click": labels})]),
    )
    assert plain.vocabularies == encoded.vocabularies == {"cat": ["x", "y", "z"]}


def test_vocabulary_matches_pandas_on_synthetic(synthetic_dir: Path) -> None:
    config = small_config()
    train, _ = make_splits(config, synthetic_dir, None)
    stats = _stats(config, train)
    frame = pq.read_table(synthetic_dir).to_pandas()
    frame = frame[frame["date"] < frame["date"].max()]
    for name in ["user_id", "tab", "user_active_degree"]:
        min_count = config.feature(name).min_count
        counts = frame[name].value_counts()
        assert set(stats.vocabularies[name]) == set(counts[counts >= min_count].index)
        got = [counts[v] for v in stats.vocabularies[name]]
        assert got == sorted(got, reverse=True)
    assert stats.rows == len(frame)
    assert stats.positive_rate == pytest.approx(frame["is_click"].mean())


@pytest.mark.parametrize("log1p", [False, True])
def test_numeric_mean_std_match_numpy_ignoring_nulls(tmp_path: Path, log1p: bool) -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(3, 1.5, 3000) * rng.choice([-1, 1], 3000, p=[0.1, 0.9])
    with_missing = values.tolist()
    for i in range(0, 3000, 97):
        with_missing[i] = None
    for i in range(5, 3000, 211):
        with_missing[i] = float("nan")
    with_missing[7] = float("inf")
    finite = np.array([v for v in with_missing if v is not None and np.isfinite(v)])
    expected = signed_log1p(finite) if log1p else finite
    split = _write(
        tmp_path,
        [
            pa.table({"x": pa.array(part, pa.float64()), "is_click": [0] * len(part)})
            for part in (with_missing[:1000], with_missing[1000:])
        ],
    )
    stats = _stats(_config([{"name": "x", "kind": "numeric", "log1p": log1p}]), split)
    mean, std = stats.numeric["x"]
    assert mean == pytest.approx(np.mean(expected), rel=1e-9)
    assert std == pytest.approx(np.std(expected), rel=1e-9)
    assert np.isfinite(mean) and std > 0


def test_signed_log1p_keeps_sign() -> None:
    x = np.array([-99.0, -1.0, 0.0, 1.0, 99.0])
    np.testing.assert_allclose(signed_log1p(x), [-np.log(100), -np.log(2), 0, np.log(2), np.log(100)])


def test_numeric_std_with_large_offset(tmp_path: Path) -> None:
    """E.g. unix timestamps: a one-pass sum-of-squares variance would lose all precision here."""
    rng = np.random.default_rng(2)
    values = 1.65e9 + rng.normal(0, 50.0, 5000)
    split = _write(
        tmp_path,
        [
            pa.table({"x": values[:2500], "is_click": [0] * 2500}),
            pa.table({"x": values[2500:], "is_click": [1] * 2500}),
        ],
    )
    mean, std = _stats(_config([{"name": "x", "kind": "numeric"}]), split).numeric["x"]
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert std == pytest.approx(values.std(), rel=1e-6)


def test_numeric_constant_and_all_null(tmp_path: Path) -> None:
    split = _write(
        tmp_path, [pa.table({"c": [3.0] * 10, "n": pa.array([None] * 10, pa.float64()), "is_click": [0, 1] * 5})]
    )
    stats = _stats(_config([{"name": "c", "kind": "numeric"}, {"name": "n", "kind": "numeric"}]), split)
    assert stats.numeric["c"] == [3.0, 1.0]  # std 0 would divide by zero: 1 instead
    assert stats.numeric["n"] == [0.0, 1.0]


def test_vocabulary_all_below_min_count(tmp_path: Path) -> None:
    split = _write(tmp_path, [pa.table({"cat": ["a", "b", "c", "a"], "other": ["x"] * 4, "is_click": [0, 1, 0, 1]})])
    config = _config([{"name": "cat", "min_count": 3}, {"name": "other", "min_count": 3}])
    with pytest.raises(PPNetError) as info:
        _stats(config, split)
    message = str(info.value)
    assert "'cat'" in message and "'other'" not in message and "min_count" in message and "\n" not in message


def test_empty_training_split(tmp_path: Path) -> None:
    split = _write(tmp_path, [pa.table({"cat": pa.array([], pa.string()), "is_click": pa.array([], pa.int64())})])
    with pytest.raises(PPNetError, match="no rows"):
        _stats(_config([{"name": "cat"}]), split)


def test_save_load_round_trip(synthetic_dir: Path, tmp_path: Path) -> None:
    config = small_config()
    train, _ = make_splits(config, synthetic_dir, None)
    stats = _stats(config, train)
    path = tmp_path / "stats.json"
    stats.save(path)
    loaded = Stats.load(path)
    assert loaded == stats
    assert loaded.vocabularies["user_id"][:5] == stats.vocabularies["user_id"][:5]
    assert json.loads(path.read_text())["rows"] == stats.rows


@pytest.mark.parametrize("content", [None, "not json", '{"kinds": {}}'])
def test_load_bad_stats_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "stats.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PPNetError) as info:
        Stats.load(path)
    assert str(path) in str(info.value)
