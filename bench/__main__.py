"""``python -m bench`` (``make bench``, ``make bench-smoke``): every measure on every log, one JSON,
markdown tables. See the package docstring (``bench/__init__.py``) for what is measured."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import bench
from bench import harness, multitask, quality, replay, report, serving, speed
from ppnet.config import load_config
from ppnet.precision import BFLOAT16, FLOAT32
from ppnet.rundir import load_run
from ppnet.stats import Stats
from ppnet.train import use_threads

SMOKE_OVERRIDES = [
    "model.hidden_units=[16]",
    "model.gate_hidden=8",
    "train.epochs=1",
    "train.batch_size=256",
    "train.learning_rate=1e-2",
    "data.shuffle_buffer=2048",
    "train.backup_every_steps=0",
]


def bench_log(
    name: str, data_path: str, config_path: Path, args: argparse.Namespace, machine: dict, work: Path
) -> dict:
    """Every measure on one log.

    The first seed of PPNet in float32 and then of PPNet in bfloat16 train alone, each in a ``ppnet
    train`` subprocess: their quality, their throughput and their peak RSS. The 4x-log subprocess
    then runs side by side with the other quality runs (trained in process; their speed is not
    reported, and RSS is per process); speed and serving are measured after both, on the first
    (float32) run's model; the multi-task leaderboard last. ``machine``: the result's, for the
    matmul peaks measured so far and whether bfloat16 is native here.
    """
    start = time.perf_counter()
    overrides, seeds = log_overrides(args), log_seeds(config_path, args)
    # The peaks again, just before the runs whose throughput is reported (the best of all is kept).
    peaks = harness.matmul_peaks(machine)
    timed = {
        policy: timed_run(name, data_path, config_path, variant, overrides, seeds[0], work)
        for policy, variant in quality.TIMED.items()
    }
    first = timed[FLOAT32]
    run_4x = harness.TrainProcess(
        config_path,
        str(harness.repeat_log(data_path, work / f"{name}-x4")),
        quality.variant_sets(config_path, quality.TIMED[FLOAT32], overrides, seeds[0]),
        work / "runs" / f"{name}-ppnet-x4",
    )
    try:
        results = [
            *({"variant": quality.TIMED[policy], "seed": seeds[0], **run.metrics} for policy, run in timed.items()),
            *quality.variant_runs(name, data_path, config_path, overrides, untimed_pairs(seeds), work),
            *quality.logreg_runs(data_path, config_path, overrides, seeds, Stats.load(first.run / "stats.json")),
        ]
    except BaseException:
        run_4x.stop()
        raise
    config = load_config(config_path, quality.variant_sets(config_path, quality.TIMED[FLOAT32], overrides, seeds[0]))
    model = load_run(first.run)
    rates = {policy: run.metrics["examples_per_sec"] for policy, run in timed.items()}
    repeats = serving.SMOKE_SERVING_REPEATS if args.smoke else serving.SERVING_REPEATS
    measured = {
        "data": data_path,
        "config_path": str(config_path),
        "overrides": overrides,
        "seeds": seeds,
        "config": config.to_dict(),
        "variant_sets": {
            variant: quality.variant_sets(config_path, variant, overrides, seeds[0]) for variant in quality.VARIANTS
        },
        "quality": quality.summarise(results),
        "memory": speed.memory(first.rss, first.metrics, run_4x, timed[BFLOAT16].rss),
        "speed": speed.speed(model, config, data_path, rates, peaks, machine["precision_auto"]["bf16_native"]),
    }
    measured["serving"] = serving.serving(
        first.run, model, config, data_path, repeats, work, measured["speed"]["forward_flops_per_example"]
    )
    if "replay" not in args.skip:
        days = replay.SMOKE_DAYS if args.smoke else replay.REPLAYED_DAYS
        measured["replay"] = replay.section(data_path, config_path, overrides, seeds, days, work / "replay")
    # Last, when nothing else of the bench is running: the leaderboard compares its models' speeds.
    if "multitask" not in args.skip:
        measured["multitask"] = multitask_section(name, data_path, config_path, args, seeds, work)
    return {**measured, "seconds": time.perf_counter() - start}


class TimedRun(NamedTuple):
    """A run trained alone in a ``ppnet train`` subprocess: its directory, peak RSS in bytes and
    ``metrics.json`` (with its training examples/sec)."""

    run: Path
    rss: int
    metrics: dict


def timed_run(
    name: str, data_path: str, config_path: Path, variant: str, overrides: list[str], seed: int, work: Path
) -> TimedRun:
    """One variant's seed trained alone, so that its throughput is its own."""
    run = work / "runs" / f"{name}-{variant}-s{seed}"
    sets = quality.variant_sets(config_path, variant, overrides, seed)
    return TimedRun(run, *harness.TrainProcess(config_path, data_path, sets, run).wait())


def untimed_pairs(seeds: list[int]) -> list[tuple[str, int]]:
    """Every (variant, seed) to train in process: all but the timed variants' first seed."""
    timed = set(quality.TIMED.values())
    return [
        (variant, seed) for variant in quality.VARIANTS for seed in seeds if not (variant in timed and seed == seeds[0])
    ]


def multitask_only(name: str, data_path: str, config_path: Path, args: argparse.Namespace, work: Path) -> dict:
    """``--only multitask``: the multi-task leaderboard of one log alone, without the hour of the rest."""
    start = time.perf_counter()
    overrides, seeds = log_overrides(args), log_seeds(config_path, args)
    return {
        "data": data_path,
        "config_path": str(config_path),
        "overrides": overrides,
        "seeds": seeds,
        "multitask": multitask_section(name, data_path, config_path, args, seeds, work),
        "seconds": time.perf_counter() - start,
    }


def multitask_section(
    name: str, data_path: str, config_path: Path, args: argparse.Namespace, seeds: list[int], work: Path
) -> dict | None:
    """The leaderboard on the multi-task config beside the log's, on the same seeds; ``None`` when
    the log's config has no multi-task config beside it (``multitask.MULTITASK_CONFIGS``)."""
    multi_path = multitask.multitask_config(config_path)
    if multi_path is None:
        return None
    overrides = log_overrides(args, multitask.SMOKE_OVERRIDES)
    return multitask.leaderboard(name, data_path, config_path, multi_path, overrides, seeds, work)


def log_overrides(args: argparse.Namespace, smoke: list[str] | None = None) -> list[str]:
    """The config overrides of a log's runs: the smoke run's tiny model (and a section's own
    ``smoke`` additions), then the user's."""
    return [*((SMOKE_OVERRIDES + (smoke or [])) if args.smoke else []), *args.set]


def log_seeds(config_path: Path, args: argparse.Namespace) -> list[int]:
    """The training seeds: the config's seed and the next ones, one for a smoke run."""
    first = load_config(config_path, log_overrides(args)).train.seed
    return [first + i for i in range(1 if args.smoke else args.seeds)]


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m bench", description=bench.__doc__.splitlines()[0])
    cli.add_argument("--data", help="a prepared parquet log (default: the KuaiRand slice, see --kuairand)")
    cli.add_argument("--config", default=str(harness.CONFIGS / "kuairand.toml"), help="TOML config for --data")
    cli.add_argument(
        "--kuairand",
        default=str(harness.KUAIRAND),
        help="directory of the official KuaiRand-Pure CSV files (default: ../shared/data/kuairand-pure "
        "beside the repository)",
    )
    cli.add_argument("--synthetic", action="store_true", help="also benchmark the embedded synthetic log")
    cli.add_argument("--seeds", type=int, default=3, help="training seeds per model (default 3)")
    cli.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    cli.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny synthetic log ({harness.SMOKE_ROWS} rows), tiny model, 1 seed; "
        "ignores --data/--kuairand/--synthetic",
    )
    cli.add_argument(
        "--only",
        choices=["multitask"],
        help="run one section alone: multitask = the multi-task leaderboard (bench/multitask.py)",
    )
    cli.add_argument(
        "--skip",
        choices=["multitask", "replay"],
        action="append",
        default=[],
        help="leave a section out (repeatable): multitask = the multi-task leaderboard, which is separate "
        "and long; replay = daily retraining (bench/replay.py)",
    )
    cli.add_argument(
        "--results",
        help="directory for the JSON (default: bench/results; --smoke: bench/tmp/smoke, which git ignores)",
    )
    return cli


def results_dir(args: argparse.Namespace) -> Path:
    """Where the JSON goes: the smoke run checks the machinery, its figures are not results to keep."""
    if args.results:
        return Path(args.results)
    return harness.SCRATCH / "smoke" if args.smoke else harness.RESULTS


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark, write ``RESULTS/<timestamp>.json``, print the markdown tables; return the JSON path."""
    args = parser().parse_args(argv)
    # Before TensorFlow starts: the process's threads are the real log's config's for every run here.
    use_threads(load_config(args.config))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = harness.SCRATCH / f"{stamp}-{os.getpid()}"
    work.mkdir(parents=True)
    started = time.perf_counter()
    result = {
        "timestamp": stamp,
        "args": vars(args),
        "versions": harness.versions(),
        "machine": {**harness.machine_info(), **harness.matmul_peaks(), "precision_auto": harness.precision_auto()},
    }
    result["logs"] = {}
    for name, path, config in harness.prepare_data(args, work):
        if args.only == "multitask":
            result["logs"][name] = multitask_only(name, path, config, args, work)
            continue
        result["logs"][name] = bench_log(name, path, config, args, result["machine"], work)
        # The best peaks so far (each log re-measures them) are the machine's, for the next log and the report.
        result["machine"].update({key: result["logs"][name]["speed"][key] for key in harness.PEAK_DTYPES})
    result["seconds"] = time.perf_counter() - started
    out = report.write_json(result, results_dir(args))
    shutil.rmtree(work)
    print(report.markdown(result))
    print(f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    harness.run_main(main, "bench")
