"""``python -m bench`` (``make bench``, ``make bench-smoke``): every measure on every log, one JSON,
markdown tables. See the package docstring (``bench/__init__.py``) for what is measured."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import bench
from bench import harness, multitask, quality, report, serving, speed
from ppnet.config import load_config
from ppnet.errors import PPNetError
from ppnet.rundir import load_run
from ppnet.stats import Stats

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
    name: str, data_path: str, config_path: Path, args: argparse.Namespace, peak_flops: float, work: Path
) -> dict:
    """Every measure on one log.

    The first PPNet seed trains alone in a ``ppnet train`` subprocess: its quality, its throughput
    and its peak RSS. The 4x-log subprocess then runs side by side with the other quality runs
    (trained in process; their speed is not reported, and RSS is per process); speed and serving
    are measured after both, on the first run's model; the multi-task leaderboard last.
    """
    start = time.perf_counter()
    overrides, seeds = log_overrides(args), log_seeds(config_path, args)
    first_sets = quality.variant_sets(config_path, "ppnet", overrides, seeds[0])
    first_run = work / "runs" / f"{name}-ppnet-s{seeds[0]}"
    # The peak again, just before the run whose throughput is reported: the best of both is the
    # machine's peak, as a neighbour's burst on a shared VM can depress any single measurement.
    peak_flops = max(peak_flops, harness.matmul_peak_flops())
    rss_1x, first = harness.TrainProcess(config_path, data_path, first_sets, first_run).wait()
    run_4x = harness.TrainProcess(
        config_path,
        str(harness.repeat_log(data_path, work / f"{name}-x4")),
        first_sets,
        work / "runs" / f"{name}-ppnet-x4",
    )
    pairs = [(variant, seed) for variant in quality.VARIANTS for seed in seeds][1:]
    try:
        results = [
            {"variant": "ppnet", "seed": seeds[0], **first},
            *quality.variant_runs(name, data_path, config_path, overrides, pairs, work),
            *quality.logreg_runs(data_path, config_path, overrides, seeds, Stats.load(first_run / "stats.json")),
        ]
    except BaseException:
        run_4x.stop()
        raise
    config = load_config(config_path, first_sets)
    model = load_run(first_run)
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
        "memory": speed.memory(rss_1x, first, run_4x),
        "speed": speed.speed(model, config, data_path, first["examples_per_sec"], peak_flops),
        "serving": serving.serving(first_run, model, config, data_path, repeats, work),
    }
    # Last, when nothing else of the bench is running: the leaderboard compares its models' speeds.
    measured["multitask"] = multitask_section(name, data_path, config_path, args, seeds, work)
    return {**measured, "seconds": time.perf_counter() - start}


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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = harness.SCRATCH / f"{stamp}-{os.getpid()}"
    work.mkdir(parents=True)
    started = time.perf_counter()
    result = {
        "timestamp": stamp,
        "args": vars(args),
        "versions": harness.versions(),
        "machine": {**harness.machine_info(), "matmul_peak_flops_per_sec": harness.matmul_peak_flops()},
    }
    result["logs"] = {}
    for name, path, config in harness.prepare_data(args, work):
        if args.only == "multitask":
            result["logs"][name] = multitask_only(name, path, config, args, work)
            continue
        result["logs"][name] = bench_log(name, path, config, args, result["machine"]["matmul_peak_flops_per_sec"], work)
        # The best peak so far (each log re-measures it) is the machine's, for the next log and the report.
        result["machine"]["matmul_peak_flops_per_sec"] = result["logs"][name]["speed"]["matmul_peak_flops_per_sec"]
    result["seconds"] = time.perf_counter() - started
    out = report.write_json(result, results_dir(args))
    shutil.rmtree(work)
    print(report.markdown(result))
    print(f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except PPNetError as err:
        sys.exit(f"bench: error: {err}")
