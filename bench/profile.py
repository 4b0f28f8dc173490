"""Where the time goes: a TensorFlow-profiler breakdown of training steps and requests, by op type.

``python -m bench.profile --data LOG [--config C] [--set K=V]`` (``make profile``) builds the model
from the config and the log's training statistics, traces ``--steps`` training steps on one batch
and ``--requests`` calls of the exported ``serving_default`` on that batch's first ``--rows`` rows
(default 1) with ``tf.profiler``, and prints
the CPU time of each op type per step / per request (summed over threads, so it can exceed the wall
time on several cores), largest first. The traces stay in ``--trace`` for TensorBoard's Profile tab.
Speed is judged by ``make bench``; this says which ops to work on.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf

from bench.harness import CONFIGS, run_main
from bench.speed import training_dataset
from ppnet import precision
from ppnet.cli import positive
from ppnet.config import load_config
from ppnet.errors import PPNetError
from ppnet.export import export_model
from ppnet.model import RankingModel, build_model
from ppnet.stats import compute_stats
from ppnet.tf_private import xplane_pb2
from ppnet.train import use_threads


def trace(run: Callable[[], object], calls: int, logdir: Path) -> tuple[dict[str, float], float]:
    """(CPU seconds per call of each op type, wall seconds per call) of ``calls`` calls of ``run``."""
    for _ in range(5):  # trace and warm up outside the profile
        run()
    tf.profiler.experimental.start(str(logdir))
    start = time.perf_counter()
    for _ in range(calls):
        result = run()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)
    wall = (time.perf_counter() - start) / calls
    tf.profiler.experimental.stop()
    traces = sorted(logdir.glob("plugins/profile/*/*.xplane.pb"))
    if not traces:
        raise PPNetError(f"{logdir}: the TensorFlow profiler wrote no trace")
    return op_seconds(traces[-1], calls), wall


def op_seconds(xplane: Path, calls: int) -> dict[str, float]:
    """CPU seconds per call of each op type in a profiler trace (TF op events are named ``name:type``)."""
    space = xplane_pb2.XSpace()
    space.ParseFromString(xplane.read_bytes())
    seconds: dict[str, float] = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and "::" not in name and "__inference" not in name:  # not executor/function events
                    seconds[name.rsplit(":", 1)[1]] += event.duration_ps * 1e-12 / calls
    return dict(seconds)


class StepUnderTest(NamedTuple):
    """A freshly built model, as ``ppnet train`` would build it, and one training batch."""

    model: RankingModel
    batch: tuple
    precision: str

    @classmethod
    def build(cls, config_path: str, data_path: str, overrides: list[str]) -> StepUnderTest:
        config = load_config(config_path, overrides)
        use_threads(config)  # as ppnet train would run it
        train_split, kinds, batches = training_dataset(config, data_path)
        stats = compute_stats(config, train_split, kinds)
        chosen = precision.choose(config.train.precision)  # as ppnet train would train it
        model = build_model(config, stats, precision=chosen.policy)
        return cls(model, next(iter(batches)), chosen.policy)

    def step(self) -> Callable[[], object]:
        """One compiled training step on the batch (the first call traces it)."""
        train_step = tf.function(self.model.train_step)
        return lambda: train_step(self.batch)


def profile(
    config_path: str, data_path: str, overrides: list[str], steps: int, requests: int, rows: int, logdir: Path
) -> dict:
    """Op-type breakdown of training steps and of ``rows``-row requests of a freshly built model."""
    batch_size = load_config(config_path, overrides).train.batch_size  # the requests' rows come from one batch
    if rows > batch_size:
        raise PPNetError(f"--rows {rows}: at most train.batch_size ({batch_size}) rows per request")
    under_test = StepUnderTest.build(config_path, data_path, overrides)
    model, batch, config = under_test.model, under_test.batch, under_test.model.config
    training, step_wall = trace(under_test.step(), steps, logdir / "train")
    with tempfile.TemporaryDirectory() as tmp:
        serve = tf.saved_model.load(str(export_model(model, tmp))).signatures["serving_default"]
        request = {name: values[:rows] for name, values in batch[0].items()}
        serving, request_wall = trace(lambda: serve(**request), requests, logdir / "serve")
    return {
        "training": training,
        "step_wall_seconds": step_wall,
        "serving": serving,
        "request_wall_seconds": request_wall,
        "request_rows": rows,
        "batch_size": config.train.batch_size,
        "precision": under_test.precision,
    }


def table(title: str, seconds: dict[str, float], wall: float, unit: float, unit_name: str, top: int) -> list[str]:
    total = sum(seconds.values())
    lines = [
        f"{title}: wall {wall * unit:,.1f} {unit_name} (under the profiler), "
        f"op CPU time {total * unit:,.1f} {unit_name}",
        "",
        f"| op type | {unit_name} | share |",
        "| --- | --- | --- |",
    ]
    for op, value in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {op} | {value * unit:,.2f} | {100 * value / total:.1f}% |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> dict:
    cli = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    cli.add_argument("--data", required=True, help="a prepared parquet log (file, directory or glob)")
    cli.add_argument("--config", default=str(CONFIGS / "kuairand.toml"), help="TOML config (default: kuairand)")
    cli.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    cli.add_argument("--steps", type=positive, default=30, help="training steps to trace (default 30)")
    cli.add_argument("--requests", type=positive, default=300, help="requests to trace (default 300)")
    cli.add_argument("--rows", type=positive, default=1, help="rows per request (default 1)")
    cli.add_argument("--top", type=int, default=15, help="op types to print (default 15)")
    cli.add_argument("--trace", default=None, help="directory for the traces (default: a temporary one)")
    args = cli.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        result = profile(
            args.config, args.data, args.set, args.steps, args.requests, args.rows, Path(args.trace or scratch)
        )
    print(
        "\n".join(
            [
                *table(
                    f"Training step (batch {result['batch_size']}, towers in {result['precision']})",
                    result["training"],
                    result["step_wall_seconds"],
                    1e3,
                    "ms",
                    args.top,
                ),
                *table(
                    f"{'One-row' if args.rows == 1 else f'{args.rows}-row'} request (serving_default)",
                    result["serving"],
                    result["request_wall_seconds"],
                    1e6,
                    "us",
                    args.top,
                ),
            ]
        )
    )
    return result


if __name__ == "__main__":
    run_main(main, "bench.profile")
