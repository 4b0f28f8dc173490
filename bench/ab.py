"""Same-process A/B of training-step time: several models built side by side, timed in turns.

``python -m bench.ab --data LOG --variant NAME CONFIG [KEY=VALUE ...] --variant ...`` builds each
variant's model as ``ppnet train`` would (config, overrides, the log's training statistics,
``train.precision``), then times compiled training steps on one batch each: ``--rounds`` rounds,
each running ``--steps`` steps of every variant in turn, and prints the median and the fastest
round per variant, its examples/sec and its ratio to the first variant.

Why: a 2-core cloud machine's speed drifts by 10-20% within minutes, so two ``make bench`` runs
(or two profiles) minutes apart cannot tell a 5% change from noise. Variants that take turns in
one process share every drift, and the median over rounds drops the bursts. No input pipeline or
validation is timed: the model's step alone (``make bench`` measures whole training runs).
``train.intra_op_threads`` holds for the whole process: every variant runs with the first one's
(compare thread counts in separate runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import tensorflow as tf

from bench.harness import run_main
from bench.profile import StepUnderTest
from ppnet.cli import positive


def time_steps(variants: dict[str, StepUnderTest], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each variant in each round, the variants taking turns within a round."""
    runs = {name: under_test.step() for name, under_test in variants.items()}
    for run in runs.values():  # trace and warm up before any timing
        for _ in range(3):
            run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                result = run()
            tf.nest.map_structure(lambda t: t.numpy(), result)  # wait for the last step
            seconds[name].append((time.perf_counter() - start) / steps)
    return seconds


def table(variants: dict[str, StepUnderTest], seconds: dict[str, list[float]]) -> list[str]:
    """A markdown table: median and fastest round per variant, examples/sec, ratio to the first."""
    lines = [
        "| variant | towers | ms/step (median) | ms/step (fastest round) | examples/sec | x first |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    first = None
    for name, under_test in variants.items():
        rate = under_test.model.config.train.batch_size / statistics.median(seconds[name])
        first = first or rate
        lines.append(
            f"| {name} | {under_test.precision} | {statistics.median(seconds[name]) * 1e3:.1f} | "
            f"{min(seconds[name]) * 1e3:.1f} | {rate:,.0f} | {rate / first:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    cli = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    cli.add_argument("--data", required=True, help="a prepared parquet log (file, directory or glob)")
    cli.add_argument(
        "--variant",
        nargs="+",
        action="append",
        required=True,
        metavar="NAME CONFIG [KEY=VALUE]",
        help="a name, a TOML config and its overrides (repeat for each variant; the first is the reference)",
    )
    cli.add_argument("--rounds", type=positive, default=10, help="rounds of every variant in turn (default 10)")
    cli.add_argument("--steps", type=positive, default=15, help="training steps per variant and round (default 15)")
    args = cli.parse_args(argv)
    if any(len(variant) < 2 for variant in args.variant):
        cli.error("each --variant needs a name and a config")
    names = [name for name, *_ in args.variant]
    if len(set(names)) != len(names):
        cli.error(f"variant names must differ, got {names}")
    variants = {name: StepUnderTest.build(config, args.data, sets) for name, config, *sets in args.variant}
    seconds = time_steps(variants, args.rounds, args.steps)
    print(f"Training steps on one batch, {args.rounds} rounds of {args.steps} steps per variant, in turns:\n")
    print("\n".join(table(variants, seconds)))
    return seconds


if __name__ == "__main__":
    run_main(main, "bench.ab")
