"""Tests of the KuaiRand-Pure → parquet converter: the real shared slice and tiny synthetic CSVs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppnet.datasets.kuairand import LEAKY_LABELS, LOG_TYPES, prepare_kuairand
from ppnet.errors import PPNetError
from tests.helpers import KUAIRAND

LOG_CSV = KUAIRAND / "log_standard_4_25_to_5_03_pure.csv"
USERS_CSV = KUAIRAND / "user_features_pure.csv"
VIDEOS_CSV = KUAIRAND / "video_features_basic_pure.csv"
TINY_BLOCK = 256  # bytes: forces several record batches even on tiny CSVs


def _leftovers(out: Path) -> list[Path]:
    """Temporary or backup siblings that a finished conversion must not leave behind."""
    return [p for p in out.parent.iterdir() if p.name.startswith(f"{out.name}.")]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    if not all(p.is_file() for p in (LOG_CSV, USERS_CSV, VIDEOS_CSV)):
        pytest.skip(f"KuaiRand-Pure slice not found at {KUAIRAND} (the CI clones the repo next to shared/)")
    out = tmp_path_factory.mktemp("kuairand") / "out"
    return prepare_kuairand([LOG_CSV], USERS_CSV, VIDEOS_CSV, out), out


def test_real_slice_one_file_per_date_with_all_rows(real: tuple[dict, Path]) -> None:
    report, out = real
    expected = pd.read_csv(LOG_CSV, usecols=["date"])["date"].value_counts().sort_index()
    assert report["rows"] == int(expected.sum()) == 154071
    assert report["dates"] == [*list(range(20220425, 20220431)), 20220501, 20220502, 20220503]
    assert sorted(p.name for p in out.iterdir()) == ["_ppnet.json", *report["files"]]  # the files and the marker
    assert report["files"] == [f"part-{d}.parquet" for d in report["dates"]]
    got = {d: pq.ParquetFile(out / f"part-{d}.parquet").metadata.num_rows for d in report["dates"]}
    assert got == expected.to_dict()
    assert report["missing_videos"] == report["missing_users"] == report["dropped_rows"] == 0
    assert _leftovers(out) == []


def test_real_slice_columns_and_join(real: tuple[dict, Path]) -> None:
    _, out = real
    table = pq.read_table(out)
    names = set(table.column_names)
    assert set(LOG_TYPES) | {"hour", "author_id", "user_active_degree", "register_days"} <= names
    assert set(LEAKY_LABELS) <= names
    frame = table.to_pandas()
    assert frame["hour"].between(0, 23).all()
    assert (frame["hour"] == frame["hourmin"] // 100).all()
    videos = pd.read_csv(VIDEOS_CSV, usecols=["video_id", "author_id"]).set_index("video_id")
    sample = frame.sample(n=2000, random_state=0)
    assert (sample["author_id"].to_numpy() == videos.loc[sample["video_id"], "author_id"].to_numpy()).all()
    users = pd.read_csv(USERS_CSV, usecols=["user_id", "user_active_degree"]).set_index("user_id")
    assert (
        sample["user_active_degree"].to_numpy() == users.loc[sample["user_id"], "user_active_degree"].to_numpy()
    ).all()


def test_real_slice_keeps_log_order_within_a_date(real: tuple[dict, Path]) -> None:
    _, out = real
    log = pd.read_csv(LOG_CSV, usecols=["date", "time_ms", "user_id", "video_id"])
    day = pq.read_table(out / "part-20220427.parquet", columns=["user_id", "video_id", "time_ms"]).to_pandas()
    want = log[log["date"] == 20220427].drop(columns="date").reset_index(drop=True)
    pd.testing.assert_frame_equal(day, want)


# ---------------------------------------------------------------- tiny synthetic inputs

LOG_HEADER = ",".join(LOG_TYPES)


def _log_row(user: int, video: int, date: int, hourmin: int, click: int) -> str:
    values = dict.fromkeys(LOG_TYPES, 0)
    values.update(
        user_id=user,
        video_id=video,
        date=date,
        hourmin=hourmin,
        is_click=click,
        time_ms=1_650_000_000_000 + hourmin,
        duration_ms=12_000,
        tab=1,
    )
    return ",".join(str(values[c]) for c in LOG_TYPES)


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Path]:
    """Two users, two videos; the log has 12 rows over two dates, 3 of them for unknown video 9."""
    rows = [
        _log_row(u, v, 20220425 + (i >= 6), 100 * (i % 24) + 7, i % 2)
        for i, (u, v) in enumerate([(1, 10), (2, 20), (1, 9), (2, 10), (1, 20), (2, 9)] * 2)
    ]
    rows = [r for i, r in enumerate(rows) if i != 11] + [_log_row(3, 9, 20220426, 2359, 1)]
    return {
        "log": _write(tmp_path / "log.csv", LOG_HEADER, rows),
        "users": _write(
            tmp_path / "users.csv", "user_id,user_active_degree,register_days", ["1,full_active,100", "2,high_active,7"]
        ),
        "videos": _write(tmp_path / "videos.csv", "video_id,author_id,tag", ["10,501,39", "20,502,2"]),
        "out": tmp_path / "out",
    }


def _run(t: dict[str, Path], **kwargs) -> dict:
    logs = kwargs.pop("logs", [t["log"]])
    return prepare_kuairand(logs, t["users"], t["videos"], t["out"], block_size=TINY_BLOCK, **kwargs)


def test_missing_video_kept_with_null_side_columns(tiny: dict[str, Path]) -> None:
    report = _run(tiny)
    assert report["rows"] == 12 and report["dropped_rows"] == 0
    assert report["missing_videos"] == 4  # video 9 appears 4 times
    assert report["missing_users"] == 1  # user 3
    frame = pq.read_table(tiny["out"]).to_pandas()
    unknown = frame[frame["video_id"] == 9]
    assert len(unknown) == 4 and unknown["author_id"].isna().all() and unknown["tag"].isna().all()
    known = frame[frame["video_id"] != 9]
    assert known["author_id"].notna().all()
    assert (known["author_id"] == known["video_id"].map({10: 501, 20: 502})).all()
    assert frame.loc[frame["user_id"] == 3, "user_active_degree"].isna().all()
    assert pq.read_schema(tiny["out"] / "part-20220426.parquet").field("author_id").type == "int64"


def test_missing_video_drop(tiny: dict[str, Path]) -> None:
    report = _run(tiny, missing_video="drop")
    assert report["missing_videos"] == 4 and report["dropped_rows"] == 4 and report["rows"] == 8
    frame = pq.read_table(tiny["out"]).to_pandas()
    assert len(frame) == 8 and 9 not in set(frame["video_id"])


def test_several_log_files_streamed_in_order(tiny: dict[str, Path], tmp_path: Path) -> None:
    second = _write(
        tmp_path / "log2.csv", LOG_HEADER, [_log_row(2, 20, 20220427, 905, 1), _log_row(1, 10, 20220425, 2300, 0)]
    )
    report = _run(tiny, logs=[tiny["log"], second])
    assert report["rows"] == 14
    assert report["files"] == ["part-20220425.parquet", "part-20220426.parquet", "part-20220427.parquet"]
    first_day = pq.read_table(tiny["out"] / "part-20220425.parquet").to_pandas()
    assert len(first_day) == 7 and first_day["hourmin"].iloc[-1] == 2300  # appended after file 1
    assert pq.read_table(tiny["out"] / "part-20220427.parquet")["hour"].to_pylist() == [9]
    schemas = {str(pq.read_schema(tiny["out"] / name)) for name in report["files"]}
    assert len(schemas) == 1


def test_duplicate_users_rejected(tiny: dict[str, Path]) -> None:
    _write(
        tiny["users"],
        "user_id,user_active_degree,register_days",
        ["1,full_active,100", "2,high_active,7", "1,low_active,3"],
    )
    with pytest.raises(PPNetError, match=r"users\.csv.*user_id.*1 duplicate") as info:
        _run(tiny)
    assert "\n" not in str(info.value)
    assert not tiny["out"].exists() and _leftovers(tiny["out"]) == []


def test_duplicate_videos_rejected(tiny: dict[str, Path]) -> None:
    _write(tiny["videos"], "video_id,author_id,tag", ["10,501,39", "10,502,2"])
    with pytest.raises(PPNetError, match=r"videos\.csv.*video_id.*1 duplicate"):
        _run(tiny)


@pytest.mark.parametrize("which, column", [("log", "is_click"), ("videos", "author_id")])
def test_missing_column_named(tiny: dict[str, Path], which: str, column: str) -> None:
    frame = pd.read_csv(tiny[which]).drop(columns=column)
    frame.to_csv(tiny[which], index=False)
    with pytest.raises(PPNetError, match=rf"{which}\.csv: missing column\(s\) {column}\b"):
        _run(tiny)


def test_missing_file_named(tiny: dict[str, Path]) -> None:
    tiny["users"].unlink()
    with pytest.raises(PPNetError, match=r"users\.csv: cannot read"):
        _run(tiny)


def test_bad_value_fails_without_leaving_files(tiny: dict[str, Path]) -> None:
    text = tiny["log"].read_text().splitlines()
    text[-1] = text[-1].replace("20220426", "2022-04-26", 1)
    tiny["log"].write_text("\n".join(text) + "\n")
    with pytest.raises(PPNetError, match=r"log\.csv: cannot parse") as info:
        _run(tiny)
    assert "\n" not in str(info.value)
    assert not tiny["out"].exists() and _leftovers(tiny["out"]) == []


def test_existing_output_needs_overwrite_and_only_ppnets_own_is_replaced(tiny: dict[str, Path]) -> None:
    tiny["out"].mkdir()
    (tiny["out"] / "stale.parquet").write_text("old")
    with pytest.raises(PPNetError, match="--overwrite"):
        _run(tiny)
    with pytest.raises(PPNetError, match="ppnet did not write this prepared log"):
        _run(tiny, overwrite=True)
    assert [p.name for p in tiny["out"].iterdir()] == ["stale.parquet"]
    (tiny["out"] / "stale.parquet").unlink()
    tiny["out"].rmdir()
    first = _run(tiny)
    with pytest.raises(PPNetError, match="--overwrite"):
        _run(tiny)
    report = _run(tiny, overwrite=True)
    assert sorted(p.name for p in tiny["out"].glob("*.parquet")) == report["files"] == first["files"]
    assert _leftovers(tiny["out"]) == []


def test_floats_beyond_int64_stay_floats(tiny: dict[str, Path]) -> None:
    """Whole-number floats become int64 codes only when every value fits int64 (1e30, inf do not)."""
    _write(
        tiny["users"],
        "user_id,user_active_degree,register_days,follow_num,fans_num",
        ["1,full_active,100,1e30,3", "2,high_active,7,5,inf"],
    )
    _run(tiny)
    schema = pq.read_schema(sorted(tiny["out"].glob("*.parquet"))[0])
    assert schema.field("follow_num").type == pa.float64() and schema.field("fans_num").type == pa.float64()
    assert schema.field("register_days").type == pa.int64()
