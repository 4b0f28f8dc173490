"""Exact AUC, gAUC and logloss against brute-force definitions."""

import itertools

import numpy as np
import pytest

from ppnet import metrics
from ppnet.errors import PPNetError


def brute_auc(labels, scores):
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding makes many ties
    assert metrics.auc(labels, scores) == pytest.approx(brute_auc(labels, scores))


def test_gauc_is_impression_weighted_and_skips_single_class_users():
    labels = np.array([1, 0, 0, 1, 0, 1, 1, 1])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.4, 0.3, 0.6])
    users = np.array(["a", "a", "b", "b", "b", "c", "c", "c"])  # c has one class only
    expected = (2 * brute_auc(labels[:2], scores[:2]) + 3 * brute_auc(labels[2:5], scores[2:5])) / 5
    assert metrics.gauc(labels, scores, users) == pytest.approx(expected)
    per_user = metrics.user_aucs(labels, scores, users)
    assert list(per_user.index) == ["a", "b"] and list(per_user.rows) == [2, 3]
    assert list(per_user.auc) == pytest.approx([brute_auc(labels[:2], scores[:2]), brute_auc(labels[2:5], scores[2:5])])


def test_logloss_and_report():
    labels, probs = np.array([1, 0, 1, 0]), np.array([0.8, 0.3, 0.6, 0.1])
    expected = -np.mean(np.log([0.8, 0.7, 0.6, 0.9]))
    result = metrics.report(labels, probs, np.array([1, 1, 2, 2]), "x")
    assert result["logloss"] == pytest.approx(expected)
    assert result["rows"] == 4 and result["observed_ctr"] == 0.5 and result["auc"] == 1.0
    assert result["gauc_users"] == 2 and metrics.report(labels, probs, np.array([1, 1, 1, 2]), "x")["gauc_users"] == 1


def test_single_class_data_is_a_clear_error():
    with pytest.raises(PPNetError, match="AUC is undefined"):
        metrics.report(np.zeros(5), np.full(5, 0.5), None, "valid.parquet")


def test_calibration_curve_bins_cover_all_rows():
    rng = np.random.default_rng(1)
    probs = rng.random(1000)
    curve = metrics.calibration_curve(rng.random(1000) < probs, probs, bins=10)
    assert curve["rows"].sum() == 1000 and len(curve) == 10
    assert curve["mean_prediction"].is_monotonic_increasing


def test_slices_are_reported_apart_with_nulls_and_single_class_slices():
    from ppnet.evaluate import slice_reports

    labels = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    probs = np.array([0.9, 0.2, 0.4, 0.6, 0.7, 0.3, 0.5, 0.8])
    users = np.array([1, 1, 2, 2, 3, 3, 4, 4])
    values = np.array(["a", "a", "a", "a", "b", "b", None, None], dtype=object)
    slices = slice_reports(labels, probs, users, values)
    assert list(slices) == ["a", "b", "null"], "most rows first, nulls named"
    assert slices["a"] == metrics.report(labels[:4], probs[:4], users[:4], "a")
    assert np.isnan(slices["b"]["auc"]) and slices["b"]["observed_ctr"] == 1.0, "one class: NaN, not an error"
    assert slices["null"]["auc"] == 1.0 and slices["null"]["rows"] == 2


def test_user_ids_stay_exact_beside_null_users():
    """Arrow turns int64 ids with a null into float64, which merged ids above 2**53 into one user."""
    import pyarrow as pa

    from ppnet.evaluate import user_ids

    ids = user_ids(pa.array([2**60, 2**60 + 1, None, 2**60, 2**60 + 1], pa.int64()))
    assert ids.tolist() == [2**60, 2**60 + 1, None, 2**60, 2**60 + 1]
    labels, scores = np.array([1, 1, 1, 0, 0]), np.array([0.9, 0.2, 0.5, 0.1, 0.8])
    assert metrics.gauc(labels, scores, ids) == pytest.approx(0.5)  # one user ranked right, one wrong
