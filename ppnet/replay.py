"""``ppnet replay``: the honest offline picture of a model that retrains every day.

For each day in order, the current model's export scores the day *before* anything trains on it;
then the model continues on that day (``train --init-from``, one pass) and its export becomes the
next version in one export base, as TF Serving would pick it up the next morning. The per-day
metrics and their means go to ``OUT/replay.json`` and a table. Comparing it with the unchanged
base model scoring the same days shows what daily retraining is worth.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from ppnet.config import Config
from ppnet.errors import PPNetError
from ppnet.evaluate import evaluate_export, is_export
from ppnet.export import next_version
from ppnet.files import atomic_directory, write_text_atomic
from ppnet.rundir import read_json
from ppnet.train import train

log = logging.getLogger(__name__)
REPORT = "replay.json"
SCORES = ("auc", "gauc", "logloss")  # averaged over the days
METRICS = (*SCORES, "rows")


def replay(config: Config, base_run: str | Path, days: list[str | Path], out: str | Path) -> dict:
    """Score, then continue on, each of ``days`` (parquet files or directories, oldest first),
    starting from the finished run ``base_run``; return and write the per-day report.

    ``OUT/export/1`` is the base model, ``OUT/export/<i+1>`` the model after day ``i``, and
    ``OUT/runs/<i>-<day>/`` that day's continued run. Each day is one pass (``train.epochs = 1``,
    the daily step) over all its rows: there is no epoch to choose, so nothing is held out
    (``data.valid_last = 0``) and ``train.refit`` is off (it would be a second pass over the day).
    """
    out = Path(out)
    if out.exists():
        raise PPNetError(f"{out}: already exists; a replay writes a new directory")
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, valid_last=0),
        train=dataclasses.replace(config.train, epochs=1, refit=False),
    )
    exports, parent, rows = out / "export", Path(base_run), []
    current = publish(parent, exports)
    for i, day in enumerate(map(Path, days), start=1):
        scored = evaluate_export(current, day)  # before the model has seen a row of this day
        rows.append({"day": str(day), "export": current.name, **{key: scored[key] for key in METRICS}})
        log.info("replay %s: auc %.4f gauc %.4f logloss %.4f", day, scored["auc"], scored["gauc"], scored["logloss"])
        run, started = out / "runs" / f"{i}-{day.stem}", time.perf_counter()
        train(config, str(day), run, init_from=parent)
        rows[-1]["train_seconds"] = time.perf_counter() - started  # the daily step: continuing on the day
        current, parent = publish(run, exports), run
    report = {"base": str(Path(base_run).resolve()), "days": rows, "mean": means(rows)}
    write_text_atomic(out / REPORT, json.dumps(report, indent=2))
    return report


def publish(run: Path, exports: Path) -> Path:
    """``run``'s export (its best model, with the rows it trained on) as the next version under
    ``exports``: a copy of the directory the run already wrote, appearing whole or not at all."""
    source = run / read_json(run / "metrics.json", "the run's metrics")["export"]
    target = exports / str(next_version(exports) if exports.exists() else 1)
    with atomic_directory(target, False, "export version", ours=is_export) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


def means(rows: list[dict]) -> dict:
    """The per-day metrics' unweighted means over the days (each day counts once)."""
    frame = pd.DataFrame(rows)
    return {key: float(frame[key].mean()) for key in SCORES}


def table(report: dict) -> str:
    """The report as text: one row per day, then the means."""
    frame = pd.DataFrame(report["days"]).set_index("day")
    frame.loc["mean", list(SCORES)] = [report["mean"][k] for k in SCORES]
    return frame.to_string(float_format="{:.4f}".format, na_rep="")
