"""Serving as a ranking service sees it: latency of a run's export on one user's requests of 1, 64,
256 and 1024 candidates, beside three floors (two trivial SavedModels and the tower alone, on the
same rows) and the FLOP bound (at the worker's own matmul peak), measured by ``serving_worker.py``
in a plain TensorFlow subprocess, with TF's default oneDNN kernels and without.

A request's rows share the user's columns (the user id and the user's own features) and vary the
candidates' (the item's and the context's). Which columns are the user's is read off the
validation rows: those constant within every user who has two or more rows (``user_side_columns``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import tensorflow as tf

from bench.harness import BENCH, script_command
from bench.speed import flops_per_example
from ppnet.config import Config
from ppnet.data.pipeline import input_specs, iter_batches
from ppnet.data.schema import input_kinds
from ppnet.data.split import Split, make_splits
from ppnet.data.tfrecord import to_example
from ppnet.export import frozen_heads, head_structure, serving_model
from ppnet.model import RankingModel, TowerInputs

SERVING_WORKER = BENCH / "serving_worker.py"
# Timed calls per request size (candidates of one user); the smoke run's are few.
SERVING_REPEATS = {1: 200, 64: 200, 256: 100, 1024: 50}
SMOKE_SERVING_REPEATS = {1: 20, 64: 20, 256: 10, 1024: 5}
USER_SIDE_ROWS = 65536  # validation rows read to tell the user-side columns
# The export's signatures served as ranking requests, by their figures' key in the worker's JSON.
REQUEST_SIGNATURES = {"serve_examples": "model_examples", "serving_default": "model"}


class Multiply(tf.Module):
    """The trivial SavedModel: ``y = 2 x`` on a ``[None]`` float32 input (TF's call-overhead floor)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 2.0 * x}


class MultiplyColumns(tf.Module):
    """A trivial SavedModel taking the export's own ``serving_default`` inputs, one tensor per
    column, and returning ``2 * 1`` per row: the floor that passing that many tensors sets."""

    def __init__(self, kinds: dict[str, str]):
        super().__init__()
        first = next(iter(kinds))
        self.serve = tf.function(
            lambda features: {"y": 2.0 * tf.ones(tf.shape(features[first]))}, input_signature=[input_specs(kinds)]
        )


class FrozenTower(tf.Module):
    """The model's tower and gates alone, weights frozen as in the export, fed their input tensors
    (``x0`` the tower's, ``x1``... the parts of the gates', then later tasks' own id embeddings, in
    ``TowerInputs.head_inputs()`` order): the floor its own arithmetic sets for a call, with no
    parsing, lookups or embeddings."""

    def __init__(self, model: RankingModel, inputs: list[np.ndarray]):
        super().__init__()
        heads = frozen_heads(model)
        structure = head_structure(model)
        specs = {f"x{i}": tf.TensorSpec([None, x.shape[1]], tf.float32, name=f"x{i}") for i, x in enumerate(inputs)}

        def serve(xs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            flat = [xs[f"x{i}"] for i in range(len(xs))]  # in order: a signature's dict comes sorted by key
            inputs = TowerInputs.of_heads(tf.nest.pack_sequence_as(structure, flat))
            logits = heads(inputs).logits  # every task's tower, as the export runs
            return {f"logit_{task}": logit for task, logit in logits.items()}

        self.serve = tf.function(serve, input_signature=[specs])


def user_side_columns(columns: dict[str, np.ndarray], user_column: str) -> list[str]:
    """The input columns constant within every user who has two or more of ``columns``' rows: the
    user id and the user's own features, which one user's ranking request shares across its
    candidates. Read off the data rather than declared, as a config says nothing of which side a
    feature describes; a column constant over the whole log counts too, which changes nothing.
    Without the user column among the inputs, no column is user-side (every row served as it is).
    """
    if user_column not in columns:
        return []
    frame = pd.DataFrame({name: values for name, values in columns.items()})
    counts = frame.groupby(user_column).size()
    repeated = frame[frame[user_column].isin(counts.index[counts >= 2])]
    distinct = repeated.groupby(user_column).nunique(dropna=False)
    return [user_column, *(name for name in distinct.columns if (distinct[name] <= 1).all())]


def ranking_request(columns: dict[str, np.ndarray], user_columns: list[str], rows: int) -> dict[str, np.ndarray]:
    """One user's ranking request of ``rows`` candidates: the first row's user columns on every
    row, and the other columns (the item's, and the context's) from the first ``rows`` rows
    (cycled if fewer), so that the first ``n`` rows are that user's request of ``n`` candidates."""
    return {name: np.resize(values[:1] if name in user_columns else values, rows) for name, values in columns.items()}


def serving_rows(
    split: Split, kinds: dict[str, str], targets: list[str], user_column: str, rows: int, out: Path
) -> tuple[Path, Path, list[str]]:
    """One user's ranking request of ``rows`` candidates built from the validation rows (at most
    ``USER_SIDE_ROWS`` of them are read, to tell the user-side columns): columns in an .npz, one
    serialized tf.Example per row in a TFRecord file (for ``serve_examples``), and the user-side
    columns."""
    features, _ = next(iter_batches(split, kinds, targets, max(rows, USER_SIDE_ROWS)))
    features = {name: values.astype(str) if values.dtype == object else values for name, values in features.items()}
    user_columns = user_side_columns(features, user_column)
    columns = ranking_request(features, user_columns, rows)
    np.savez(out.with_suffix(".npz"), **columns)
    with tf.io.TFRecordWriter(str(out.with_suffix(".tfrecord"))) as writer:
        for i in range(rows):
            row = to_example({name: values[i : i + 1] for name, values in columns.items()})
            writer.write(row.SerializeToString())
    return out.with_suffix(".npz"), out.with_suffix(".tfrecord"), user_columns


def request_figures(runs: dict, forward_flops: int | float, peak_flops: float) -> dict:
    """Per signature and candidates per request: p50/p99 and rows/sec (``runs``, one worker's
    figures), the tower-alone floor's p50 and the p50 as a multiple of it, and the FLOP bound (the
    forward FLOPs of the request's rows at the float32 matmul peak) as milliseconds and the share
    of it reached (rows/sec against the bound's rows/sec)."""
    bound_rows_per_sec = peak_flops / forward_flops
    return {
        signature: {
            batch: {
                **{key: timing[key] for key in ("p50_ms", "p99_ms", "rows_per_sec")},
                "tower_p50_ms": runs["tower"][batch]["p50_ms"],
                "p50_vs_tower": timing["p50_ms"] / runs["tower"][batch]["p50_ms"],
                "flop_bound_ms": 1e3 * timing["rows"] / bound_rows_per_sec,
                "of_flop_bound": timing["rows_per_sec"] / bound_rows_per_sec,
            }
            for batch, timing in runs[model].items()
        }
        for signature, model in REQUEST_SIGNATURES.items()
    }


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def serving(
    run: Path,
    model: RankingModel,
    config: Config,
    data_path: str,
    repeats: dict[int, int],
    work: Path,
    forward_flops: int | float,
) -> dict:
    """Latency of the run's export (per-column ``serving_default`` and ``serve_examples``) on one
    user's ranking requests of each size in ``repeats``, and of three floors (two trivial
    SavedModels and ``model``'s tower alone) on the same rows, in a plain TensorFlow subprocess;
    once with TF's default oneDNN kernels and once without (``onednn_off``), because the two
    kernel libraries differ most on the one-row matmuls of a single request. ``requests`` (in each)
    sets the export's figures beside the tower floor and the FLOP bound of ``forward_flops`` per
    row at the float32 matmul peak that worker measured: the bench's own process may run with
    other threads (``train.intra_op_threads``), and the bound is the requests' own process's."""
    export = run / json.loads((run / "metrics.json").read_text())["export"]
    _, valid_split = make_splits(config, data_path, None)
    kinds = input_kinds(config, list(valid_split.files))
    rows, examples, user_columns = serving_rows(
        valid_split, kinds, config.target_columns, config.data.user_column, max(repeats), work / f"{run.name}-rows"
    )
    # The tower floor computes as the export does (train.export_precision).
    floors, tower_rows = save_floors(serving_model(model, config.train.export_precision), kinds, rows, work)
    inputs = Inputs(rows, examples, tower_rows)
    figures = {
        onednn: run_worker(export, inputs, floors, repeats, work / f"{run.name}-serving-onednn{onednn}.json", onednn)
        for onednn in ("1", "0")  # TF's default, and plain Eigen kernels (as TF Serving's standard build)
    }
    for floor in floors.values():
        shutil.rmtree(floor)
    for runs in figures.values():
        runs["requests"] = request_figures(runs, forward_flops, runs["matmul_peak_flops_per_sec"])
    return {
        "export_bytes": directory_bytes(export),
        "request_columns": {"user": user_columns, "candidate": [name for name in kinds if name not in user_columns]},
        "flop_bound": {
            "forward_flops_per_row": forward_flops,
            "peak_flops_per_sec": figures["1"]["matmul_peak_flops_per_sec"],
        },
        **figures["1"],
        "onednn_off": figures["0"],
    }


def save_floors(model: RankingModel, kinds: dict[str, str], rows: Path, work: Path) -> tuple[dict[str, Path], Path]:
    """The three floors saved as SavedModels under ``work``: their directories by name, and the
    tower's inputs computed from ``rows`` (an .npz of ``x0``, ``x1``...)."""
    columns = {name: tf.constant(values) for name, values in np.load(rows).items()}
    inputs = model.tower_inputs(columns)
    tower_inputs = [x.numpy() for x in tf.nest.flatten(inputs.head_inputs())]
    tower_rows = work / "tower-rows.npz"
    np.savez(tower_rows, **{f"x{i}": x for i, x in enumerate(tower_inputs)})
    floors = {
        "trivial": Multiply(),
        "trivial_columns": MultiplyColumns(kinds),
        "tower": FrozenTower(model, tower_inputs),
    }
    for name, floor in floors.items():
        tf.saved_model.save(floor, str(work / name), signatures={"serving_default": floor.serve})
    return {name: work / name for name in floors}, tower_rows


class Inputs(NamedTuple):
    """The served rows' files: the export's column inputs (.npz), the same rows as serialized
    tf.Examples (TFRecord), and the tower's inputs (.npz)."""

    rows: Path
    examples: Path
    tower_rows: Path


def run_worker(
    export: Path, inputs: Inputs, floors: dict[str, Path], repeats: dict[int, int], out: Path, onednn: str
) -> dict:
    """``serving_worker.py`` on the export and the floors, with ``TF_ENABLE_ONEDNN_OPTS=onednn``
    and without ppnet's ``TF_USE_LEGACY_KERAS``: its figures (written to ``out``)."""
    command = script_command(
        SERVING_WORKER,
        *("--rows", str(inputs.rows), "--examples", str(inputs.examples), "--model", str(export)),
        *("--trivial", str(floors["trivial"]), "--trivial-columns", str(floors["trivial_columns"])),
        *("--tower", str(floors["tower"]), "--tower-rows", str(inputs.tower_rows)),
        *("--repeats", json.dumps(repeats), "--out", str(out)),
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_ENABLE_ONEDNN_OPTS")}
    env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    # TensorFlow's start-up lines (written before absl's logging exists) are shown only on failure.
    done = subprocess.run(
        command, env=env, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace"
    )
    if done.returncode:
        raise RuntimeError(f"{SERVING_WORKER.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    """``python -m bench.serving --run RUN_DIR --data PATH``: the serving measures of any finished
    run's export (e.g. a multi-task ``pepnet``), as ``make bench`` takes them for its PPNet run."""
    import argparse
    import tempfile

    from ppnet.rundir import load_run

    cli = argparse.ArgumentParser(prog="python -m bench.serving", description=main.__doc__.splitlines()[0])
    cli.add_argument("--run", required=True, help="a finished run directory (metrics.json, export/)")
    cli.add_argument("--data", required=True, help="the log it was trained on (validation rows are served)")
    cli.add_argument("--smoke", action="store_true", help="few repeats")
    args = cli.parse_args(argv)
    model = load_run(args.run)
    forward_flops = flops_per_example(model)["forward"]
    with tempfile.TemporaryDirectory() as work:
        repeats = SMOKE_SERVING_REPEATS if args.smoke else SERVING_REPEATS
        figures = serving(Path(args.run), model, model.config, args.data, repeats, Path(work), forward_flops)
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
