"""Tests of the synthetic log's multi-task labels (``long_view``, ``is_like``) and of its older columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ppnet import synthetic
from ppnet.synthetic import generate

OLD_COLUMNS = [
    "user_id",
    "video_id",
    "author_id",
    "date",
    "hour",
    "tab",
    "user_active_degree",
    "follow_user_num",
    "video_type",
    "video_duration",
    "is_click",
]
NEW_LABELS = ["long_view", "is_like"]


@pytest.fixture(scope="module")
def log() -> dict[str, np.ndarray]:
    table = generate(rows=50_000, seed=0)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def test_new_labels_are_0_1_ints_at_the_stated_rates(log):
    for name in NEW_LABELS:
        assert log[name].dtype == np.int64
        assert set(np.unique(log[name])) == {0, 1}
    assert 0.25 <= log["long_view"].mean() <= 0.35
    assert 0.02 <= log["is_like"].mean() <= 0.04


def test_long_view_depends_on_the_tab(log):
    tabs = np.unique(log["tab"])
    rates = [log["long_view"][log["tab"] == t].mean() for t in tabs]
    assert max(rates) - min(rates) > 0.05
    # the length effect itself changes sign between tabs: a per-domain slope, not only an offset
    seconds = np.log(log["video_duration"])
    slopes = [np.corrcoef(seconds[log["tab"] == t], log["long_view"][log["tab"] == t])[0, 1] for t in tabs]
    assert max(slopes) > 0.05 and min(slopes) < -0.05


def test_likes_follow_clicks(log):
    clicked = log["is_click"] == 1
    assert log["is_like"][clicked].mean() > 1.5 * log["is_like"][~clicked].mean()
    assert np.corrcoef(log["is_like"], log["is_click"])[0, 1] > 0.02


def test_columns_are_the_old_ones_then_the_new_labels_deterministic_by_seed():
    first, again, other = generate(rows=2000, seed=3), generate(rows=2000, seed=3), generate(rows=2000, seed=4)
    assert first.column_names == OLD_COLUMNS + NEW_LABELS
    assert first.equals(again)
    for name in ["is_click", *NEW_LABELS]:
        assert not np.array_equal(first.column(name).to_numpy(), other.column(name).to_numpy())


def test_old_columns_do_not_depend_on_the_task_labels(monkeypatch):
    real = generate(rows=2000, seed=5)

    def stub(seed: int, tab: np.ndarray, *_: np.ndarray) -> dict[str, np.ndarray]:
        return {name: np.zeros(len(tab), np.int64) for name in NEW_LABELS}

    monkeypatch.setattr(synthetic, "task_labels", stub)
    stubbed = generate(rows=2000, seed=5)
    assert stubbed.select(OLD_COLUMNS).equals(real.select(OLD_COLUMNS))
    assert stubbed.column("long_view").equals(pa.chunked_array([np.zeros(2000, np.int64)]))
