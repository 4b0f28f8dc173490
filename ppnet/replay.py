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

from ppnet.config import Config, as_written_now
from ppnet.errors import PPNetError
from ppnet.evaluate import evaluate_export, is_export
from ppnet.files import atomic_directory, exclusive_lock, write_text_atomic
from ppnet.rundir import changed_keys, partial_dir, read_json
from ppnet.train import train, use_threads

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

    The report is rewritten as each day ends (``complete`` false until the last), so the same
    command run again after a crash resumes: the days it records are kept, the next is scored by
    the export of the run before it and continued (a run the crash interrupted resumes as ``ppnet
    train`` does). Run again with days added after the recorded ones, a replay goes on from its
    last model. It refuses an ``OUT`` that is not a replay of the same base, config and first days.
    """
    use_threads(config)  # before the first day is scored: TensorFlow fixes it when it starts
    # Absolute paths: a rerun from another directory, or with relative paths, is the same replay.
    out, config, days = Path(out), replay_config(config), [Path(day).absolute() for day in days]
    with exclusive_lock(out, "replay directory"):
        report = started_report(out, config, Path(base_run), days)
        rows, exports = report["days"], out / "export"
        if report["complete"] and len(days) > len(rows):  # days added to a finished replay
            report["complete"] = False
            write_report(out, report)
        parent = out / "runs" / rows[-1]["run"] if rows else Path(base_run)
        for i, day in enumerate(days[len(rows) :], start=len(rows) + 1):
            current = publish(parent, exports, version=i)
            scored = evaluate_export(current, day)  # before the model has seen a row of this day
            log.info(
                "replay %s: auc %.4f gauc %.4f logloss %.4f", day, scored["auc"], scored["gauc"], scored["logloss"]
            )
            run, started = out / "runs" / f"{i}-{day.stem}", time.perf_counter()
            resumed = partial_dir(run).exists()  # a crash interrupted this day's run: it resumes
            # overwrite: a run finished before a crash kept it from the report is trained again
            train(config, str(day), run, init_from=parent, overwrite=True)
            row = {"day": str(day), "run": run.name, "export": current.name, **{k: scored[k] for k in METRICS}}
            # a run interrupted and resumed: its seconds are this process's only, the row says so
            rows.append(
                {**row, "train_seconds": time.perf_counter() - started, **({"resumed": True} if resumed else {})}
            )
            write_report(out, report)
            parent = run
        publish(parent, exports, version=len(days) + 1)
        report["complete"] = True  # every day scored and continued, the last model published
        write_report(out, report)
    return with_means(report)


def replay_config(config: Config) -> Config:
    """The daily step's config: one pass (``train.epochs = 1``), nothing held out, no refit."""
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, valid_last=0),
        train=dataclasses.replace(config.train, epochs=1, refit=False),
    )


def started_report(out: Path, config: Config, base_run: Path, days: list[Path]) -> dict:
    """The report so far: a new one (``out`` created) or, to resume, the one ``out`` holds, when
    it is a replay of the same base and config whose recorded days begin ``days``."""
    fresh = {"base": str(base_run.resolve()), "config": config.to_dict(), "complete": False, "days": []}
    if not out.exists() or not any(out.iterdir()):  # empty: a replay stopped before its first report
        out.mkdir(parents=True, exist_ok=True)
        write_report(out, fresh)
        return fresh
    if not (out / REPORT).is_file():
        raise PPNetError(f"{out}: already exists and is not a replay directory (no {REPORT}); choose a new --out")
    report = read_json(out / REPORT, "the replay's report")
    check_report(out / REPORT, report)
    changed = changed_keys(as_written_now(report.get("config")), fresh["config"])
    recorded = [Path(row["day"]) for row in report["days"]]
    if report.get("base") != fresh["base"]:
        reason = f"its base is {report.get('base')}, not {fresh['base']}"
    elif changed:
        reason = f"its config differs at {changed[0]}"
    elif recorded != days[: len(recorded)]:
        reason = f"its days begin {[str(d) for d in recorded]}, not {[str(d) for d in days[: len(recorded)]]}"
    else:
        log.info("resuming the replay in %s after %d of %d days", out, len(recorded), len(days))
        return report
    raise PPNetError(
        f"{out}: a replay already there cannot be resumed with these arguments ({reason}); choose a new --out"
    )


def check_report(path: Path, report: dict) -> None:
    """A report to resume has what ``replay`` reads back (``complete``, and ``days`` rows each
    naming its ``day``, ``run`` and scores); anything else, e.g. a hand-edited file, is one line."""
    rows = report.get("days") if isinstance(report, dict) else None
    keys = {"day", "run", *METRICS}
    shape_ok = isinstance(rows, list) and all(isinstance(r, dict) and keys <= r.keys() for r in rows)
    if not shape_ok or not isinstance(report.get("complete"), bool):
        raise PPNetError(
            f"{path}: not a replay report ppnet wrote (expected a true/false 'complete' and 'days' rows "
            f"with {sorted(keys)}); choose a new --out"
        )


def write_report(out: Path, report: dict) -> None:
    """``OUT/replay.json``: the report with the means over the days recorded so far."""
    write_text_atomic(out / REPORT, json.dumps(with_means(report), indent=2))


def with_means(report: dict) -> dict:
    """``report`` with ``mean``: the per-day metrics' means over its days."""
    return {**report, "mean": means(report["days"])}


def publish(run: Path, exports: Path, version: int) -> Path:
    """``run``'s export (its best model, with the rows it trained on) as ``exports/<version>``: a
    copy of the directory the run already wrote, appearing whole or not at all (kept if a replay
    that resumes published it already)."""
    target = exports / str(version)
    if target.is_dir():
        return target
    source = run / read_json(run / "metrics.json", "the run's metrics")["export"]
    with atomic_directory(target, False, "export version", ours=is_export) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


def means(rows: list[dict]) -> dict:
    """The per-day metrics' unweighted means over the days (each day counts once; none before the first)."""
    if not rows:
        return {}
    frame = pd.DataFrame(rows)
    return {key: float(frame[key].mean()) for key in SCORES}


def table(report: dict) -> str:
    """The report as text: one row per day, then the means."""
    frame = pd.DataFrame(report["days"]).set_index("day")
    frame.loc["mean", list(SCORES)] = [report["mean"][k] for k in SCORES]
    return frame.to_string(float_format="{:.4f}".format, na_rep="")
