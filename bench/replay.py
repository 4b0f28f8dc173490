"""Daily retraining on a log of days: ``ppnet replay`` (continue day by day) against the base model
scoring the same days unchanged and against retraining from scratch before each day, over seeds.

A section of ``python -m bench`` (``--skip replay`` leaves it out), and alone:
``python -m bench.replay --data data/kuairand --config ppnet/configs/kuairand.toml --days 3``. The
base trains on every day before the last ``--days`` (validated on its last day, as shipped); each
of the last days is then scored by (a) the base as it is, (b) the model continued on every earlier
replayed day (``ppnet.replay``), (c) the config trained from scratch on every day before it. Per
model: the mean over the days of AUC, gAUC and logloss, mean and std over seeds; and the wall time
of a day's continuation (``ppnet train --init-from``, one pass over the day) against a retrain from
scratch on all the days before it, both in this process. Alone, it writes
``bench/results/replay-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import RESULTS
from bench.report import replay_table
from ppnet.config import load_config
from ppnet.data.schema import resolve_files
from ppnet.evaluate import evaluate_export
from ppnet.replay import SCORES, replay
from ppnet.train import train

REPLAYED_DAYS = 3
SMOKE_DAYS = 1
TIMES = ("continue_seconds", "scratch_seconds")


def section(
    data: str, config_path: Path, overrides: list[str], seeds: list[int], replayed: int, work: Path
) -> dict | None:
    """The replay of the log's last ``replayed`` days over ``seeds``; None when the log has too few
    day files for it (the base needs two before them: one to train on, one to validate on)."""
    days = [Path(f) for f in resolve_files(data)]
    if len(days) < replayed + 2:
        return None
    work.mkdir(parents=True, exist_ok=True)
    runs = [one_seed(config_path, overrides, days, replayed, seed, work) for seed in seeds]
    return {
        "days": [day.name for day in days[-replayed:]],
        "runs": runs,
        "summary": summary(runs),
        "seconds": seconds(runs),
    }


def one_seed(config_path: Path, overrides: list[str], days: list[Path], replayed: int, seed: int, work: Path) -> dict:
    """Per model, the replayed days' mean metrics; the mean seconds of a continuation and of a retrain."""
    config = load_config(config_path, [*overrides, f"train.seed={seed}"])
    history, later = days[:-replayed], days[-replayed:]
    base = work / f"base-s{seed}"
    train(config, str(linked(history, work / f"history-s{seed}")), base)
    report = replay(config, base, later, work / f"replay-s{seed}")
    scores = {"base": [], "continued": report["days"], "scratch": []}
    scratch_seconds = []
    for i, day in enumerate(later):
        scores["base"].append(evaluate_export(base / "export" / "1", day))
        started = time.perf_counter()
        run = work / f"scratch-{day.stem}-s{seed}"
        train(config, str(linked(days[: len(history) + i], work / f"before-{day.stem}-s{seed}")), run)
        scratch_seconds.append(time.perf_counter() - started)
        scores["scratch"].append(evaluate_export(run / "export" / "1", day))
    means = {model: {k: statistics.mean(day[k] for day in rows) for k in SCORES} for model, rows in scores.items()}
    continued = statistics.mean(day["train_seconds"] for day in report["days"])
    return {
        "seed": seed,
        "means": means,
        "continue_seconds": continued,
        "scratch_seconds": statistics.mean(scratch_seconds),
    }


def linked(files: list[Path], directory: Path) -> Path:
    """A directory of links to ``files``: the log of those days, read as one ``--data``."""
    directory.mkdir(parents=True)
    for file in files:
        (directory / file.name).symlink_to(file.resolve())
    return directory


def summary(runs: list[dict]) -> dict:
    """Per model and metric: mean and std over seeds of the per-day means."""
    models = runs[0]["means"]
    return {
        model: {
            k: {
                "mean": statistics.mean(r["means"][model][k] for r in runs),
                "std": statistics.pstdev(r["means"][model][k] for r in runs),
            }
            for k in SCORES
        }
        for model in models
    }


def seconds(runs: list[dict]) -> dict:
    """Mean and std over seeds of a day's continuation and of a retrain, and their ratio."""
    figures = {
        key: {"mean": statistics.mean(r[key] for r in runs), "std": statistics.pstdev(r[key] for r in runs)}
        for key in TIMES
    }
    return {**figures, "ratio": figures["continue_seconds"]["mean"] / figures["scratch_seconds"]["mean"]}


def main(argv: list[str] | None = None) -> dict:
    cli = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.splitlines()[0])
    cli.add_argument("--data", required=True, help="a directory of one parquet file per day")
    cli.add_argument("--config", required=True, type=Path)
    cli.add_argument("--days", type=int, default=REPLAYED_DAYS, help="how many of the last days to replay")
    cli.add_argument("--seeds", type=int, default=3)
    cli.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    cli.add_argument("--results", type=Path, default=RESULTS)
    args = cli.parse_args(argv)
    seeds = [load_config(args.config, args.set).train.seed + i for i in range(args.seeds)]
    with tempfile.TemporaryDirectory() as work:
        result = section(args.data, args.config, args.set, seeds, args.days, Path(work))
    if result is None:
        raise SystemExit(f"bench.replay: {args.data} has fewer than {args.days + 2} day files")
    result = {"data": args.data, "config": str(args.config), **result}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"replay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print("\n".join(replay_table(result)))
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
