"""Serving: latency of a run's export and of three floors (two trivial SavedModels and the tower
alone), measured by ``serving_worker.py`` in a plain TensorFlow subprocess, with TF's default oneDNN
kernels and without."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import tensorflow as tf

from bench.harness import BENCH, script_command
from ppnet.config import Config
from ppnet.data.pipeline import input_specs, iter_batches
from ppnet.data.schema import input_kinds
from ppnet.data.split import Split, make_splits
from ppnet.data.tfrecord import to_example
from ppnet.export import frozen_heads
from ppnet.model import RankingModel, TowerInputs

SERVING_WORKER = BENCH / "serving_worker.py"
SERVING_REPEATS = {1: 200, 64: 200, 1024: 50}
SMOKE_SERVING_REPEATS = {1: 20, 64: 20, 1024: 5}


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
    (``x0`` the tower's, ``x1``... the parts of the gates'): the floor its own arithmetic sets for a
    call, with no parsing, lookups or embeddings."""

    def __init__(self, model: RankingModel, inputs: list[np.ndarray]):
        super().__init__()
        heads = frozen_heads(model)
        specs = {f"x{i}": tf.TensorSpec([None, x.shape[1]], tf.float32, name=f"x{i}") for i, x in enumerate(inputs)}

        def serve(xs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            tower, *gate_parts = xs.values()
            logits = heads(TowerInputs(tower, gate_parts, [])).logits  # every task's tower, as the export runs
            return {f"logit_{task}": logit for task, logit in logits.items()}

        self.serve = tf.function(serve, input_signature=[specs])


def serving_rows(split: Split, kinds: dict[str, str], targets: list[str], rows: int, out: Path) -> tuple[Path, Path]:
    """The first ``rows`` validation rows (cycled if fewer) as serving inputs: columns in an .npz, and
    one serialized tf.Example per row in a TFRecord file (for ``serve_examples``)."""
    features, _ = next(iter_batches(split, kinds, targets, rows))
    columns = {
        name: np.resize(values.astype(str) if values.dtype == object else values, rows)
        for name, values in features.items()
    }
    np.savez(out.with_suffix(".npz"), **columns)
    with tf.io.TFRecordWriter(str(out.with_suffix(".tfrecord"))) as writer:
        for i in range(rows):
            row = to_example({name: values[i : i + 1] for name, values in columns.items()})
            writer.write(row.SerializeToString())
    return out.with_suffix(".npz"), out.with_suffix(".tfrecord")


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def serving(
    run: Path, model: RankingModel, config: Config, data_path: str, repeats: dict[int, int], work: Path
) -> dict:
    """Latency of the run's export (per-column ``serving_default`` and ``serve_examples``) and of
    three floors (two trivial SavedModels and ``model``'s tower alone), in a plain TensorFlow
    subprocess; once with TF's default oneDNN kernels and once without (``onednn_off``), because
    the two kernel libraries differ most on the one-row matmuls of a single request."""
    export = run / json.loads((run / "metrics.json").read_text())["export"]
    _, valid_split = make_splits(config, data_path, None)
    kinds = input_kinds(config, list(valid_split.files))
    rows, examples = serving_rows(valid_split, kinds, config.target_columns, max(repeats), work / f"{run.name}-rows")
    columns = {name: tf.constant(values) for name, values in np.load(rows).items()}
    inputs = model.tower_inputs(columns)
    tower_inputs = [x.numpy() for x in [inputs.tower, *inputs.gate_parts]]
    tower_rows = work / f"{run.name}-tower-rows.npz"
    np.savez(tower_rows, **{f"x{i}": x for i, x in enumerate(tower_inputs)})
    floors = {
        "trivial": Multiply(),
        "trivial_columns": MultiplyColumns(kinds),
        "tower": FrozenTower(model, tower_inputs),
    }
    for floor_name, floor in floors.items():
        tf.saved_model.save(floor, str(work / floor_name), signatures={"serving_default": floor.serve})
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_ENABLE_ONEDNN_OPTS")}
    figures = {}
    for onednn in ("1", "0"):  # TF's default, and plain Eigen kernels (as TF Serving's standard build)
        out = work / f"{run.name}-serving-onednn{onednn}.json"
        command = script_command(
            SERVING_WORKER,
            "--rows",
            str(rows),
            "--examples",
            str(examples),
            "--model",
            str(export),
            "--trivial",
            str(work / "trivial"),
            "--trivial-columns",
            str(work / "trivial_columns"),
            "--tower",
            str(work / "tower"),
            "--tower-rows",
            str(tower_rows),
            "--repeats",
            json.dumps(repeats),
            "--out",
            str(out),
        )
        subprocess.run(
            command, env={**env, "TF_ENABLE_ONEDNN_OPTS": onednn}, cwd=work, check=True, stdout=subprocess.DEVNULL
        )
        figures[onednn] = json.loads(out.read_text())
    for floor_name in floors:
        shutil.rmtree(work / floor_name)
    return {"export_bytes": directory_bytes(export), **figures["1"], "onednn_off": figures["0"]}


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
    with tempfile.TemporaryDirectory() as work:
        repeats = SMOKE_SERVING_REPEATS if args.smoke else SERVING_REPEATS
        figures = serving(Path(args.run), model, model.config, args.data, repeats, Path(work))
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
