"""Exact ranking and calibration metrics on numpy arrays (shared by train, evaluate, notebook).

Keras' streaming AUC is bucketed (200 thresholds); these are the exact, tie-aware values that
metrics.json and the README report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ppnet.errors import PPNetError


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one class."""
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum()
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(scores)).rank(method="average").to_numpy()
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC, skipping users who saw a single class."""
    return weighted_auc(user_aucs(labels, scores, groups))


def weighted_auc(per_user: pd.DataFrame) -> float:
    """gAUC of ``user_aucs``' table: its AUCs weighted by rows; NaN without a user."""
    return float(np.average(per_user.auc, weights=per_user.rows)) if len(per_user) else float("nan")


def user_aucs(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Each user's AUC and row count (columns ``auc``, ``rows``; index: the user), for the users who
    saw both classes: what gAUC averages, kept apart so that it can be averaged over any set of users.

    Computed for all users at once with a grouped rank, not a Python loop over users.
    """
    frame = pd.DataFrame({"y": np.asarray(labels, dtype=np.float64), "s": np.asarray(scores), "g": groups})
    frame["rank"] = frame.groupby("g", sort=False)["s"].rank(method="average")
    frame["pos_rank"] = frame["rank"] * frame["y"]
    per_user = frame.groupby("g", sort=False).agg(n=("y", "size"), pos=("y", "sum"), rank_sum=("pos_rank", "sum"))
    per_user = per_user[(per_user.pos > 0) & (per_user.pos < per_user.n)]
    neg = per_user.n - per_user.pos
    user_auc = (per_user.rank_sum - per_user.pos * (per_user.pos + 1) / 2) / (per_user.pos * neg)
    return pd.DataFrame({"auc": user_auc, "rows": per_user.n})


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration_curve(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean prediction vs. observed rate in equal-count bins of the prediction."""
    frame = pd.DataFrame({"y": labels, "p": probabilities})
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), q=min(bins, len(frame)), labels=False)
    return frame.groupby("bin").agg(mean_prediction=("p", "mean"), observed_rate=("y", "mean"), rows=("y", "size"))


def report(
    labels: np.ndarray, probabilities: np.ndarray, users: np.ndarray | None, source: str, one_class_ok: bool = False
) -> dict:
    """The metrics every command prints: auc, gauc (and the users it averages), logloss, rows, mean
    prediction, observed CTR.

    All-one-class data has no AUC: that is a user error (wrong split or file), reported as such;
    ``one_class_ok`` (a slice of the data, which may hold one class) reports it as NaN instead.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size == 0:
        raise PPNetError(f"{source}: no rows to evaluate")
    if labels.min() == labels.max() and not one_class_ok:
        raise PPNetError(
            f"{source}: every label is {labels[0]:g} ({labels.size} rows); AUC is undefined "
            "with a single class, evaluate on data with both clicks and non-clicks"
        )
    per_user = user_aucs(labels, probabilities, users) if users is not None else pd.DataFrame({"auc": [], "rows": []})
    return {
        "auc": auc(labels, probabilities),
        "gauc": weighted_auc(per_user),
        "gauc_users": len(per_user),  # how many users gAUC averages: few make it noisy (a small slice)
        "logloss": logloss(labels, probabilities),
        "rows": int(labels.size),
        "mean_prediction": float(np.mean(probabilities)),
        "observed_ctr": float(np.mean(labels)),
    }


TABLE_COLUMNS = ("auc", "gauc", "gauc_users", "logloss", "rows", "mean_prediction", "observed_ctr")
COUNTS = ("gauc_users", "rows")  # printed as integers


def table(result: dict) -> str:
    """A result's per-task metrics as a text table, one row per task (what ``ppnet evaluate`` prints)."""
    frame = pd.DataFrame(result["tasks"]).T[list(TABLE_COLUMNS)]
    frame.index.name = "task"
    return _text(frame)


def slice_table(result: dict, column: str) -> str:
    """A result's metrics by value of ``column`` (``ppnet evaluate --by``), one row per task and value."""
    rows = {
        (task, value): metrics
        for task, report in result["tasks"].items()
        for value, metrics in report["by"][column].items()
    }
    frame = pd.DataFrame(rows).T[list(TABLE_COLUMNS)]
    frame.index.names = ["task", column]
    return _text(frame)


def _text(frame: pd.DataFrame) -> str:
    return frame.to_string(formatters=dict.fromkeys(COUNTS, "{:.0f}".format), float_format="{:.4f}".format)
