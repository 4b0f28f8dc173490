"""Daily retraining on a log of days: ``ppnet replay`` (continue day by day) against the base model
scoring the same days unchanged and against retraining from scratch before each day, over seeds.

``python -m bench.replay --data data/kuairand --config ppnet/configs/kuairand.toml --days 3``: the
base trains on every day before the last ``--days`` (validated on its last day, as shipped); each
of the last days is then scored by (a) the base as it is, (b) the model continued on every earlier
replayed day (``ppnet.replay``), (c) the config trained from scratch on every day before it. Per
model: the mean over the days of AUC, gAUC and logloss, mean and std over seeds, and the wall time
of a day's continuation against a from-scratch run. Writes ``bench/results/replay-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import RESULTS
from ppnet.config import load_config
from ppnet.data.schema import resolve_files
from ppnet.evaluate import evaluate_export
from ppnet.replay import SCORES, replay
from ppnet.train import train


def one_seed(config_path: Path, days: list[Path], replayed: int, seed: int, work: Path) -> dict:
    """Per model, each replayed day's metrics, and the seconds of each continuation and each retrain."""
    config = load_config(config_path, [f"train.seed={seed}"])
    history, later = days[:-replayed], days[-replayed:]
    base = work / f"base-s{seed}"
    train(config, str(linked(history, work / f"history-s{seed}")), base)
    started = time.perf_counter()
    report = replay(config, base, later, work / f"replay-s{seed}")
    continued_seconds = (time.perf_counter() - started) / replayed
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
    return {"seed": seed, "means": means, "continue_seconds": continued_seconds, "scratch_seconds": scratch_seconds}


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


def main(argv: list[str] | None = None) -> dict:
    cli = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.splitlines()[0])
    cli.add_argument("--data", required=True, help="a directory of one parquet file per day")
    cli.add_argument("--config", required=True, type=Path)
    cli.add_argument("--days", type=int, default=3, help="how many of the last days to replay")
    cli.add_argument("--seeds", type=int, default=3)
    cli.add_argument("--results", type=Path, default=RESULTS)
    args = cli.parse_args(argv)
    days = [Path(f) for f in resolve_files(args.data)]
    with tempfile.TemporaryDirectory() as work:
        runs = [one_seed(args.config, days, args.days, 42 + i, Path(work)) for i in range(args.seeds)]
    result = {"data": args.data, "config": str(args.config), "days": args.days, "runs": runs, "summary": summary(runs)}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"replay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    for model, figures in result["summary"].items():
        print(model, "  ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in figures.items()))
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
