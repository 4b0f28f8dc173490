"""The embedded default click log: synthetic, deterministic by seed, shaped like a real one.

Users, photos and authors are Zipf-distributed (a few heavy users and hits, a long tail). Click
probability mixes global effects (context, popularity) with personal ones: each user has a
taste vector over authors and photos and a personal sensitivity to video length and type. The
personal part is what PPNet's per-user gates are meant to capture, so PPNet should beat the
plain DNN here, as it does on real logs.

Two more 0/1 labels, named as in KuaiRand, serve multi-task learning (PEPNet: one tower per
task, a domain gate on ``tab``, the page an impression came from): ``long_view`` (~30% of rows)
and ``is_like`` (~3%). Each mixes the click's personal tastes, per-tab effects (offsets, and a
per-tab slope on video length or on the taste term: what the domain gate can learn) and its own
noise; likes follow the click's latent interest. They come from a second generator, drawn after
the click, so every older column is the same for a seed as before they existed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ppnet.files import PREPARED, atomic_directory, prepared_by_ppnet

log = logging.getLogger(__name__)

FIRST_DATE = 20220601


def zipf_ids(rng: np.random.Generator, n_ids: int, size: int, exponent: float = 1.05) -> np.ndarray:
    """``size`` draws from ``n_ids`` ids with Zipf-like popularity; id numbers are shuffled."""
    weights = 1.0 / np.arange(1, n_ids + 1) ** exponent
    ranks = rng.choice(n_ids, size=size, p=weights / weights.sum())
    return rng.permutation(n_ids)[ranks]


def task_labels(
    seed: int,
    tab: np.ndarray,
    length: np.ndarray,
    length_taste: np.ndarray,
    taste_fit: np.ndarray,
    click_logit: np.ndarray,
) -> dict[str, np.ndarray]:
    """``long_view`` and ``is_like``: shared tastes, per-tab effects and own noise, from ``default_rng([seed, 1])``."""
    rng = np.random.default_rng([seed, 1])
    rows = len(tab)
    long_logit = (
        np.array([-1.3, -0.7, -1.1, -0.4, -1.6])[tab]
        + np.array([-1.0, 0.6, -0.3, 1.0, -1.4])[tab] * length
        + 0.8 * length_taste * length
        + 0.4 * taste_fit
        + rng.normal(0, 0.5, rows)
    )
    like_logit = (
        np.array([-4.2, -3.6, -4.5, -3.4, -3.9])[tab]
        + 0.6 * click_logit
        + np.array([0.6, 1.4, 0.2, 1.0, -0.3])[tab] * taste_fit
        + rng.normal(0, 0.5, rows)
    )
    draws = rng.random((2, rows))
    return {
        "long_view": (draws[0] < 1 / (1 + np.exp(-long_logit))).astype(np.int64),
        "is_like": (draws[1] < 1 / (1 + np.exp(-like_logit))).astype(np.int64),
    }


def generate(
    rows: int = 300_000, days: int = 8, users: int = 5_000, videos: int = 20_000, authors: int = 2_000, seed: int = 0
) -> pa.Table:
    """A synthetic log of ``rows`` impressions over ``days`` consecutive dates; labels ``is_click`` and
    the multi-task ``long_view`` and ``is_like`` (the last two columns)."""
    rng = np.random.default_rng(seed)
    taste = 4
    user_taste = rng.normal(0, 1, (users, taste))
    author_style = rng.normal(0, 1, (authors, taste))
    video_topic = rng.normal(0, 1, (videos, taste))
    user_bias, video_bias = rng.normal(0, 0.5, users), rng.normal(0, 0.5, videos)
    user_length_taste, user_ad_taste = rng.normal(0, 1, users), rng.normal(0, 1, users)
    user_degree = rng.choice(np.array(["high_active", "middle_active", "low_active"]), users, p=[0.3, 0.5, 0.2])
    user_follows = np.floor(rng.lognormal(3, 1.5, users)).astype(np.int64)
    video_author = zipf_ids(rng, authors, videos, exponent=0.9)
    video_is_ad = rng.random(videos) < 0.15
    video_seconds = rng.lognormal(3.5, 0.8, videos)

    u = zipf_ids(rng, users, rows)
    v = zipf_ids(rng, videos, rows)
    a = video_author[v]
    day = np.sort(rng.integers(0, days, rows))
    hour = rng.integers(0, 24, rows)
    tab = rng.choice(5, rows, p=[0.6, 0.2, 0.1, 0.07, 0.03])
    length = (np.log(video_seconds[v]) - 3.5) / 0.8
    by_author = np.einsum("ij,ij->i", user_taste[u], author_style[a])
    by_topic = np.einsum("ij,ij->i", user_taste[u], video_topic[v])
    logit = (
        -0.3
        + user_bias[u]
        + video_bias[v]
        + np.array([0.0, -0.4, 0.3, -0.8, 0.5])[tab]
        + 0.3 * np.sin(hour / 24 * 2 * np.pi)
        + 0.5 * by_author / np.sqrt(taste)
        + 0.5 * by_topic / np.sqrt(taste)
        + 0.8 * user_length_taste[u] * length
        + 0.8 * user_ad_taste[u] * np.where(video_is_ad[v], 1.0, -1.0)
    )
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    taste_fit = (by_author + by_topic) / (2 * np.sqrt(taste))
    tasks = task_labels(seed, tab, length, user_length_taste[u], taste_fit, logit)
    return pa.table(
        {
            "user_id": u.astype(np.int64),
            "video_id": v.astype(np.int64),
            "author_id": a.astype(np.int64),
            "date": (FIRST_DATE + day).astype(np.int64),
            "hour": hour.astype(np.int64),
            "tab": tab.astype(np.int64),
            "user_active_degree": user_degree[u],
            "follow_user_num": user_follows[u],
            "video_type": np.where(video_is_ad[v], "AD", "NORMAL"),
            "video_duration": video_seconds[v] * 1000.0,
            "is_click": click,
            **tasks,
        }
    )


def write_synthetic(out: str | Path, rows: int = 300_000, seed: int = 0, overwrite: bool = False) -> dict:
    """Write the synthetic log to ``out/part-<date>.parquet`` atomically; return a summary."""
    out = Path(out)
    table = generate(rows=rows, seed=seed)
    with atomic_directory(out, overwrite, "prepared log", ours=prepared_by_ppnet) as tmp:
        dates = table.column("date").to_numpy()
        for date in np.unique(dates):
            pq.write_table(table.filter(pa.array(dates == date)), tmp / f"part-{date}.parquet")
        (tmp / PREPARED).write_text(json.dumps({"prepared_by": "ppnet prepare synthetic", "rows": rows, "seed": seed}))
    ctr = float(np.mean(table.column("is_click").to_numpy()))
    log.info("wrote %d synthetic rows (CTR %.3f) to %s", table.num_rows, ctr, out)
    return {"rows": table.num_rows, "ctr": ctr, "files": sorted(p.name for p in out.glob("*.parquet"))}
