"""One benchmark run: quality, training speed, memory and serving latency → one JSON + a markdown table.

``python -m ppnet.bench`` (``make bench``) prepares the KuaiRand slice (or takes ``--data``; with
``--synthetic`` also the embedded synthetic log) and measures on each log:

* quality: PPNet (as configured; shared gates with the ids also in the tower; ``ids`` gates), the
  DNN (with its own tuning where a config's differs, ``BASELINE_TUNING``) and a one-hot
  logistic-regression floor, over ``--seeds`` seeds: mean and std of validation auc, gauc, logloss;
* training speed: the first PPNet run's steady-state examples/sec, the input pipeline alone, and
  the analytic training FLOP/s as a fraction of this machine's dense float32 matmul peak;
* memory: peak RSS of ``ppnet train`` subprocesses on the log and on the log repeated 4x;
* serving: p50/p99 latency of the export's ``serving_default`` (one tensor per column) and
  ``serve_examples`` (serialized tf.Examples) for batches of 1, 64 and 1024 rows, in a plain
  TensorFlow subprocess, next to two floors of TF's call overhead (a one-input multiply, and a
  trivial model taking the export's own column inputs) and the floor of the model's own
  arithmetic (its tower and gates alone, frozen as in the export, fed their input tensors); with
  TF's default oneDNN kernels and without (``TF_ENABLE_ONEDNN_OPTS=0``).

Machine, versions, config and every figure go to ``bench/results/<timestamp>.json`` (``--results``)
and a markdown table is printed. Scratch files live in ``bench/tmp/`` and are removed after a
successful run. ``--smoke`` runs all of it on a tiny synthetic log with a tiny model in well under a
minute.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import ppnet  # first: sets TF_USE_LEGACY_KERAS before TensorFlow loads
import numpy as np
import tensorflow as tf

from ppnet.config import Config, load_config
from ppnet.data.pipeline import input_specs, iter_batches, make_dataset
from ppnet.data.schema import input_kinds, resolve_files
from ppnet.data.split import Split, make_splits
from ppnet.data.tfrecord import to_example
from ppnet.errors import PPNetError
from ppnet.evaluate import score_split
from ppnet.export import frozen_tower
from ppnet.features import make_lookup, numeric_normalizer, table_size
from ppnet.model import RankingModel
from ppnet.stats import Stats
from ppnet.train import load_run, model_predictor, train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"
KUAIRAND = REPO.parent / "shared" / "data" / "kuairand-pure"
# "ppnet" is PPNet as the log's config has it; the others fix the gate settings they name.
VARIANTS = {"ppnet": ["model.name=ppnet", "model.gate_stop_gradient=shared"],
            "ppnet_tower_ids": ["model.name=ppnet", "model.gate_stop_gradient=shared",
                                "model.personal_ids_in_tower=true"],
            "ppnet_ids": ["model.name=ppnet", "model.gate_stop_gradient=ids", "model.personal_ids_in_tower=true"],
            "dnn": ["model.name=dnn"]}
# The DNN baseline's own tuning where it differs from a config's (PPNet's), by config file name;
# `--set` still wins. KuaiRand: dropout does not help PPNet (kuairand.toml has none) but steadies
# the DNN (gAUC std over 3 seeds 0.0022 with 0.2, 0.0048 without; README, Performance).
BASELINE_TUNING = {"kuairand.toml": ["model.dropout=0.2"]}
LOGREG = "logreg"
LOGREG_L2 = 1e-6
QUALITY_KEYS = ("auc", "gauc", "logloss")
SMOKE_ROWS = 4000
SMOKE_OVERRIDES = ["model.hidden_units=[16]", "model.gate_hidden=8", "train.epochs=1", "train.batch_size=256",
                   "train.learning_rate=1e-2", "data.shuffle_buffer=2048", "train.backup_every_steps=0"]
SERVING_REPEATS = {1: 200, 64: 200, 1024: 50}
SMOKE_SERVING_REPEATS = {1: 20, 64: 20, 1024: 5}
PACKAGES = ("tensorflow", "tf-keras", "tensorflow-recommenders", "pyarrow", "numpy", "pandas")

# Runs a command and prints its peak RSS (KiB). A wrapper, because a child forked from this large
# process would inherit this process's RSS high-water mark in its own ru_maxrss.
RSS_WRAPPER = r'''
import resource, subprocess, sys
with open(sys.argv[1], "w") as log:
    code = subprocess.call(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
'''
# Run by a separate interpreter: TensorFlow alone, no ppnet, no TF_USE_LEGACY_KERAS (as TF Serving).
SERVING_SCRIPT = r'''
import json, os, sys, time
import numpy as np
import tensorflow as tf


def latency(serve, inputs, repeats):
    """p50/p99 of one call (outputs fetched) after warm-up calls, and rows/sec over all repeats."""
    for _ in range(10):
        serve(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [value.numpy() for value in serve(**inputs).values()]
        times.append(time.perf_counter() - start)
    rows = int(next(iter(inputs.values())).shape[0])
    return {"rows": rows, "repeats": repeats, "p50_ms": 1e3 * float(np.percentile(times, 50)),
            "p99_ms": 1e3 * float(np.percentile(times, 99)), "rows_per_sec": rows * repeats / float(np.sum(times))}


def bench(model_dir, columns, repeats, signature="serving_default"):
    serve = tf.saved_model.load(model_dir).signatures[signature]
    return {str(n): latency(serve, {k: tf.constant(v[:n]) for k, v in columns.items()}, r) for n, r in repeats.items()}


rows_path, examples_path, model_dir, trivial_dir, trivial_columns_dir, tower_dir, tower_rows_path, out_path, repeats = \
    sys.argv[1:10]
repeats = {int(n): r for n, r in json.loads(repeats).items()}
rows = dict(np.load(rows_path))
examples = {"examples": np.array([r.numpy() for r in tf.data.TFRecordDataset(examples_path)], dtype=object)}
trivial = {"x": np.linspace(0.0, 1.0, max(repeats), dtype=np.float32)}
result = {"model": bench(model_dir, rows, repeats),
          "model_examples": bench(model_dir, examples, repeats, "serve_examples"),
          "trivial": bench(trivial_dir, trivial, repeats), "trivial_columns": bench(trivial_columns_dir, rows, repeats),
          "tower": bench(tower_dir, dict(np.load(tower_rows_path)), repeats),
          "ppnet_imported": "ppnet" in sys.modules, "tf_use_legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
          "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
with open(out_path, "w") as f:
    json.dump(result, f)
'''


# --- machine -------------------------------------------------------------------------------------

def machine_info() -> dict:
    """CPU model, cores, memory and platform of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"cpu": models[0] if models else platform.processor(), "cores": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)), "memory_bytes": pages,
            "platform": platform.platform()}


def versions() -> dict:
    """Python, ppnet and library versions, and the git commit of the repository."""
    found = {"python": platform.python_version(), "ppnet": ppnet.__version__}
    found.update({name: importlib.metadata.version(name) for name in PACKAGES})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    found["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    found["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return found


def matmul_peak_flops(n: int = 1024, repeats: int = 40) -> float:
    """Best dense float32 matmul FLOP/s of an ``n x n`` by ``n x n`` product in a ``tf.function``."""
    a, b = tf.random.uniform([n, n]), tf.random.uniform([n, n])
    product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    product().numpy()  # trace and warm up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product().numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


# --- data ----------------------------------------------------------------------------------------

def prepare_data(args: argparse.Namespace, work: Path) -> list[tuple[str, str, Path]]:
    """(name, parquet path, config) of every log to benchmark, preparing them under ``work``."""
    from ppnet.synthetic import write_synthetic

    if args.smoke:
        write_synthetic(work / "synthetic", rows=SMOKE_ROWS, seed=0)
        return [("synthetic", str(work / "synthetic"), CONFIGS / "default.toml")]
    if args.data:
        logs = [(Path(args.data).name, args.data, Path(args.config))]
    elif not KUAIRAND.is_dir():
        raise PPNetError(f"{KUAIRAND}: KuaiRand slice not found; pass --data PATH --config TOML, or --smoke")
    else:
        from ppnet.datasets.kuairand import prepare_kuairand

        prepare_kuairand(sorted(KUAIRAND.glob("log_standard_*.csv")), KUAIRAND / "user_features_pure.csv",
                         KUAIRAND / "video_features_basic_pure.csv", work / "kuairand")
        logs = [("kuairand", str(work / "kuairand"), Path(args.config))]
    if args.synthetic:
        write_synthetic(work / "synthetic", seed=0)
        logs.append(("synthetic", str(work / "synthetic"), CONFIGS / "default.toml"))
    return logs


def repeat_log(data_path: str, out: Path, times: int = 4) -> Path:
    """Every parquet file of the log written ``times`` times under different names (same dates)."""
    out.mkdir(parents=True)
    for i, file in enumerate(resolve_files(data_path)):
        for copy in range(times):
            shutil.copyfile(file, out / f"copy{copy}-{i:04d}-{file.name}")
    return out


def serving_rows(split: Split, kinds: dict[str, str], label: str, rows: int, out: Path) -> tuple[Path, Path]:
    """The first ``rows`` validation rows (cycled if fewer) as serving inputs: columns in an .npz, and
    one serialized tf.Example per row in a TFRecord file (for ``serve_examples``)."""
    features, _ = next(iter_batches(split, kinds, label, rows))
    columns = {name: np.resize(values.astype(str) if values.dtype == object else values, rows)
               for name, values in features.items()}
    np.savez(out.with_suffix(".npz"), **columns)
    with tf.io.TFRecordWriter(str(out.with_suffix(".tfrecord"))) as writer:
        for i in range(rows):
            row = to_example({name: values[i:i + 1] for name, values in columns.items()})
            writer.write(row.SerializeToString())
    return out.with_suffix(".npz"), out.with_suffix(".tfrecord")


# --- quality -------------------------------------------------------------------------------------

class LogisticRegression(tf.keras.Model):
    """One-hot logistic regression: one weight per vocabulary entry (a 1-d embedding), linear numerics.

    The lookups and normalisers are ppnet's own, so it sees exactly the features the ranker sees.
    """

    def __init__(self, config: Config, stats: Stats, l2: float = LOGREG_L2):
        super().__init__(name="logistic_regression")
        categorical = [f for f in config.features if f.kind != "numeric"]
        self.lookups = {f.name: make_lookup(f, stats.kinds[f.name], stats.vocabularies.get(f.name))
                        for f in categorical}
        self.tables = {name: tf.keras.layers.Embedding(table_size(lookup), 1, embeddings_initializer="zeros",
                                                       embeddings_regularizer=tf.keras.regularizers.L2(l2))
                       for name, lookup in self.lookups.items()}
        self.normalizer = numeric_normalizer(config.features, stats)
        rate = min(max(stats.positive_rate, 1e-6), 1 - 1e-6)
        bias = tf.keras.initializers.Constant(math.log(rate / (1 - rate)))  # the training CTR, as the ranker
        self.linear = tf.keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer=bias,
                                            kernel_regularizer=tf.keras.regularizers.L2(l2))

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        rows = tf.shape(next(iter(features.values())))[0]
        numeric = self.normalizer(features) if self.normalizer else tf.zeros([rows, 1])
        terms = [table(self.lookups[name](features[name])) for name, table in self.tables.items()]
        return tf.squeeze(tf.add_n([self.linear(numeric), *terms]), axis=-1)


def train_logreg(config: Config, stats: Stats, splits: tuple[Split, Split], kinds: dict[str, str],
                 seed: int) -> dict:
    """Fit the logistic-regression floor (Adam, at most 2 epochs) and report its validation metrics."""
    tf.keras.utils.set_random_seed(seed)
    model = LogisticRegression(config, stats)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    label, batch = config.data.label, config.train.batch_size
    model.fit(make_dataset(splits[0], kinds, label, batch, config.data.shuffle_buffer, seed),
              epochs=min(2, config.train.epochs), verbose=0)
    return score_split(model_predictor(model, kinds), splits[1], kinds, label, config.data.user_column)


def variant_sets(config_path: Path, variant: str, overrides: list[str], seed: int) -> list[str]:
    """The config overrides of one (variant, seed) run: the baseline's tuning, then the user's."""
    tuning = BASELINE_TUNING.get(config_path.name, []) if variant == "dnn" else []
    return [*tuning, *overrides, *VARIANTS[variant], f"train.seed={seed}"]


def variant_runs(name: str, data_path: str, config_path: Path, overrides: list[str],
                 pairs: list[tuple[str, int]], work: Path) -> list[dict]:
    """Train each (variant, seed) in process: each run's metrics with variant and seed."""
    results = []
    for variant, seed in pairs:
        config = load_config(config_path, variant_sets(config_path, variant, overrides, seed))
        metrics = train(config, data_path, work / "runs" / f"{name}-{variant}-s{seed}")
        results.append({"variant": variant, "seed": seed, **metrics})
    return results


def logreg_runs(data_path: str, config_path: Path, overrides: list[str], seeds: list[int], stats: Stats) -> list[dict]:
    """The logistic-regression floor for every seed, on the rankers' splits and statistics."""
    config = load_config(config_path, overrides)
    splits = make_splits(config, data_path, None)
    kinds = input_kinds(config, list(splits[0].files))
    return [{"variant": LOGREG, "seed": seed, **train_logreg(config, stats, splits, kinds, seed)} for seed in seeds]


def summarise(runs: list[dict]) -> dict:
    """Per variant: per-seed auc/gauc/logloss and their mean and (population) std."""
    summary: dict[str, dict] = {}
    for variant in dict.fromkeys(run["variant"] for run in runs):
        chosen = [run for run in runs if run["variant"] == variant]
        summary[variant] = {"runs": [{key: run[key] for key in ("seed", *QUALITY_KEYS)} for run in chosen]}
        for key in QUALITY_KEYS:
            values = np.array([run[key] for run in chosen], dtype=np.float64)
            summary[variant][key] = {"mean": float(values.mean()), "std": float(values.std())}
    return summary


# --- speed ---------------------------------------------------------------------------------------

def tower_width(config: Config) -> int:
    """The width of the tower's input: every feature's embedding (or numeric value) side by side."""
    model = config.model
    width = sum(f.dim if f.kind != "numeric" else 1 for f in config.features)
    if model.name == "ppnet" and not model.personal_ids_in_tower:
        width -= sum(config.feature(p).dim for p in model.personal_ids)
    return width


def forward_flops(config: Config) -> int:
    """Analytic forward FLOPs per example: ``2 * in * out`` per Dense of the tower and the gates.

    Embedding lookups, activations and the gates' element-wise products are ignored.
    """
    model = config.model
    inputs = [tower_width(config), *model.hidden_units]  # input width of each Dense layer of the tower
    flops = sum(2 * a * b for a, b in zip(inputs, [*model.hidden_units, 1]))
    if model.name != "ppnet":
        return flops
    ids_width = sum(config.feature(p).dim for p in model.personal_ids)
    gate_width = inputs[0] + (ids_width if model.gate_stop_gradient == "shared" else 0)
    return flops + sum(2 * gate_width * model.gate_hidden + 2 * model.gate_hidden * w for w in inputs)


def train_flops(config: Config) -> int:
    """Analytic training FLOPs per example: each Dense's forward FLOPs, as many for its kernel's
    gradient and as many for its input's gradient, except the input gradient of the shared gates'
    ``stop_gradient`` copy of the tower's input, which nothing needs and ``GateNNs`` skips."""
    model = config.model
    skipped = 0
    if model.name == "ppnet" and model.gate_stop_gradient == "shared":
        skipped = 2 * tower_width(config) * model.gate_hidden * (len(model.hidden_units) + 1)
    return 3 * forward_flops(config) - skipped


def input_pipeline_rate(config: Config, data_path: str) -> float:
    """Examples/sec of one epoch of the training ``make_dataset`` alone, after its first batch."""
    train_split, _ = make_splits(config, data_path, None)
    kinds = input_kinds(config, list(train_split.files))
    dataset = make_dataset(train_split, kinds, config.data.label, config.train.batch_size,
                           config.data.shuffle_buffer, config.train.seed)
    batches = iter(dataset)
    next(batches)
    rows, start = 0, time.perf_counter()
    for _, labels in batches:
        rows += int(labels.shape[0])
    return rows / (time.perf_counter() - start)


def speed(config: Config, data_path: str, train_rate: float, peak_flops: float) -> dict:
    """Training and input-pipeline throughput, and the training FLOP utilisation of the matmul peak."""
    per_example = train_flops(config)
    return {"train_examples_per_sec": train_rate, "input_examples_per_sec": input_pipeline_rate(config, data_path),
            "forward_flops_per_example": forward_flops(config), "train_flops_per_example": per_example,
            "train_flops_per_sec": per_example * train_rate, "matmul_peak_flops_per_sec": peak_flops,
            "flop_utilisation": per_example * train_rate / peak_flops}


# --- memory --------------------------------------------------------------------------------------

class TrainProcess:
    """``python -m ppnet.cli train`` in a subprocess, under a wrapper that reports its peak RSS."""

    def __init__(self, config_path: Path, data_path: str, overrides: list[str], out: Path):
        self.out, self.log = out, out.with_name(out.name + ".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        sets = [arg for item in overrides for arg in ("--set", item)]
        command = [sys.executable, "-m", "ppnet.cli", "train", "--config", str(config_path), "--data", data_path,
                   "--out", str(out), *sets]
        self.process = subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, str(self.log), *command], cwd=REPO,
                                        stdout=subprocess.PIPE, text=True, start_new_session=True)

    def stop(self) -> None:
        """Terminate the wrapper and the training under it (their own process group) if still running."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait()

    def wait(self) -> tuple[int, dict]:
        """Peak RSS in bytes and the run's metrics.json; fails with the tail of the run's log."""
        stdout, _ = self.process.communicate()
        if self.process.returncode != 0:
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-20:])
            raise RuntimeError(f"ppnet train --out {self.out} exited with {self.process.returncode}:\n{tail}")
        return int(stdout.split()[-1]) * 1024, json.loads((self.out / "metrics.json").read_text())  # KiB → bytes


def memory(rss_1x: int, metrics_1x: dict, run_4x: TrainProcess) -> dict:
    """Peak RSS and training rows on the log and on the log repeated 4x, and the 4x / 1x RSS ratio."""
    rss_4x, metrics_4x = run_4x.wait()
    return {"peak_rss_1x_bytes": rss_1x, "train_rows_1x": metrics_1x["train_rows"],
            "peak_rss_4x_bytes": rss_4x, "train_rows_4x": metrics_4x["train_rows"], "ratio_4x_1x": rss_4x / rss_1x}


# --- serving -------------------------------------------------------------------------------------

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
        self.serve = tf.function(lambda features: {"y": 2.0 * tf.ones(tf.shape(features[first]))},
                                 input_signature=[input_specs(kinds)])


class FrozenTower(tf.Module):
    """The model's tower and gates alone, weights frozen as in the export, fed their input tensors
    (``x0`` the tower's, ``x1``... the parts of the gates'): the floor its own arithmetic sets for a
    call, with no parsing, lookups or embeddings."""

    def __init__(self, model: RankingModel, inputs: list[np.ndarray]):
        super().__init__()
        tower = frozen_tower(model)
        specs = {f"x{i}": tf.TensorSpec([None, x.shape[1]], tf.float32, name=f"x{i}") for i, x in enumerate(inputs)}
        self.serve = tf.function(lambda xs: {"logit": tower(*xs.values())[0]}, input_signature=[specs])


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def serving(run: Path, config: Config, data_path: str, repeats: dict[int, int], work: Path) -> dict:
    """Latency of the run's export (per-column ``serving_default`` and ``serve_examples``) and of
    three floors (two trivial SavedModels and the tower alone), in a plain TensorFlow subprocess;
    once with TF's default oneDNN kernels and once without (``onednn_off``): oneDNN's one-row
    matmuls are several times slower than Eigen's."""
    export = run / json.loads((run / "metrics.json").read_text())["export"]
    _, valid_split = make_splits(config, data_path, None)
    kinds = input_kinds(config, list(valid_split.files))
    rows, examples = serving_rows(valid_split, kinds, config.data.label, max(repeats), work / f"{run.name}-rows")
    model = load_run(run)
    columns = {name: tf.constant(values) for name, values in np.load(rows).items()}
    dnn_input, gate_parts, _ = model.tower_inputs(columns)
    tower_inputs = [x.numpy() for x in [dnn_input, *gate_parts]]
    tower_rows = work / f"{run.name}-tower-rows.npz"
    np.savez(tower_rows, **{f"x{i}": x for i, x in enumerate(tower_inputs)})
    floors = {"trivial": Multiply(), "trivial_columns": MultiplyColumns(kinds), "tower": FrozenTower(model, tower_inputs)}
    for floor_name, floor in floors.items():
        tf.saved_model.save(floor, str(work / floor_name), signatures={"serving_default": floor.serve})
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_ENABLE_ONEDNN_OPTS")}
    figures = {}
    for onednn in ("1", "0"):  # TF's default, and plain Eigen kernels (as TF Serving's standard build)
        out = work / f"{run.name}-serving-onednn{onednn}.json"
        command = [sys.executable, "-c", SERVING_SCRIPT, str(rows), str(examples), str(export),
                   str(work / "trivial"), str(work / "trivial_columns"), str(work / "tower"), str(tower_rows), str(out),
                   json.dumps(repeats)]
        subprocess.run(command, env={**env, "TF_ENABLE_ONEDNN_OPTS": onednn}, cwd=work, check=True,
                       stdout=subprocess.DEVNULL)
        figures[onednn] = json.loads(out.read_text())
    for floor_name in floors:
        shutil.rmtree(work / floor_name)
    return {"export_bytes": directory_bytes(export), **figures["1"], "onednn_off": figures["0"]}


# --- report --------------------------------------------------------------------------------------

def bench_log(name: str, data_path: str, config_path: Path, args: argparse.Namespace, peak_flops: float,
              work: Path) -> dict:
    """Every measure on one log.

    The first PPNet seed trains alone in a ``ppnet train`` subprocess: its quality, its throughput
    and its peak RSS. The 4x-log subprocess then runs side by side with the other quality runs
    (trained in process; their speed is not reported, and RSS is per process); speed and serving
    are measured after both.
    """
    start = time.perf_counter()
    overrides = [*(SMOKE_OVERRIDES if args.smoke else []), *args.set]
    seeds = [load_config(config_path, overrides).train.seed + i for i in range(1 if args.smoke else args.seeds)]
    first_sets = variant_sets(config_path, "ppnet", overrides, seeds[0])
    first_run = work / "runs" / f"{name}-ppnet-s{seeds[0]}"
    # The peak again, just before the run whose throughput is reported: the best of both is the
    # machine's peak (a neighbour's burst on this shared VM once halved a single measurement).
    peak_flops = max(peak_flops, matmul_peak_flops())
    rss_1x, first = TrainProcess(config_path, data_path, first_sets, first_run).wait()
    run_4x = TrainProcess(config_path, str(repeat_log(data_path, work / f"{name}-x4")), first_sets,
                          work / "runs" / f"{name}-ppnet-x4")
    pairs = [(variant, seed) for variant in VARIANTS for seed in seeds][1:]
    try:
        results = [{"variant": "ppnet", "seed": seeds[0], **first},
                   *variant_runs(name, data_path, config_path, overrides, pairs, work),
                   *logreg_runs(data_path, config_path, overrides, seeds, Stats.load(first_run / "stats.json"))]
    except BaseException:
        run_4x.stop()
        raise
    config = load_config(config_path, first_sets)
    repeats = SMOKE_SERVING_REPEATS if args.smoke else SERVING_REPEATS
    return {"data": data_path, "config_path": str(config_path), "overrides": overrides, "seeds": seeds,
            "config": config.to_dict(),
            "variant_sets": {variant: variant_sets(config_path, variant, overrides, seeds[0]) for variant in VARIANTS},
            "quality": summarise(results), "memory": memory(rss_1x, first, run_4x),
            "speed": speed(config, data_path, first["examples_per_sec"], peak_flops),
            "serving": serving(first_run, config, data_path, repeats, work),
            "seconds": time.perf_counter() - start}


def markdown(result: dict) -> str:
    """The result as markdown: per log, one table per measure."""
    lines = [f"# ppnet bench {result['timestamp']}",
             f"{result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"{result['machine']['memory_bytes'] / 2 ** 30:.1f} GiB; TF {result['versions']['tensorflow']}; "
             f"matmul peak {result['machine']['matmul_peak_flops_per_sec'] / 1e9:.1f} GFLOP/s"]
    for name, log in result["logs"].items():
        lines += ["", f"## {name} ({log['data']})", *quality_table(log["quality"]), *speed_table(log["speed"]),
                  *memory_table(log["memory"]), *serving_table(log["serving"])]
    return "\n".join(lines)


def quality_table(scores: dict) -> Iterator[str]:
    yield from ["", "### Quality (validation, mean ± std over seeds)", "",
                "| model | auc | gauc | logloss |", "| --- | --- | --- | --- |"]
    for variant, summary in scores.items():
        cells = [f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}" for k in QUALITY_KEYS]
        yield f"| {variant} | {' | '.join(cells)} |"


def speed_table(figures: dict) -> Iterator[str]:
    yield from ["", "### Training speed (ppnet)", "", "| measure | value |", "| --- | --- |",
                f"| training examples/sec | {figures['train_examples_per_sec']:,.0f} |",
                f"| input pipeline examples/sec | {figures['input_examples_per_sec']:,.0f} |",
                f"| training FLOPs/example | {figures['train_flops_per_example']:,} |",
                f"| training GFLOP/s | {figures['train_flops_per_sec'] / 1e9:.2f} |",
                f"| matmul peak GFLOP/s (best of run start, before training) | "
                f"{figures['matmul_peak_flops_per_sec'] / 1e9:.1f} |",
                f"| FLOP utilisation of matmul peak | {100 * figures['flop_utilisation']:.2f}% |"]


def memory_table(figures: dict) -> Iterator[str]:
    yield from ["", "### Memory (peak RSS of `ppnet train`, PPNet)", "", "| log | train rows | peak RSS MiB |",
                "| --- | --- | --- |"]
    for copies in ("1x", "4x"):
        mib = figures[f"peak_rss_{copies}_bytes"] / 2 ** 20
        yield f"| {copies} | {figures[f'train_rows_{copies}']:,} | {mib:,.0f} |"
    yield f"| ratio 4x / 1x | | {figures['ratio_4x_1x']:.2f} |"


SERVED = {"model": "export, serving_default (one tensor per column)", "model_examples": "export, serve_examples",
          "trivial": "trivial: one multiply, one input", "trivial_columns": "trivial, the export's column inputs",
          "tower": "the tower and gates alone (frozen), fed their inputs"}


def serving_table(figures: dict) -> Iterator[str]:
    yield from ["", f"### Serving (export {figures['export_bytes'] / 2 ** 20:.1f} MiB)", "",
                "| model | batch | p50 ms | p99 ms | rows/sec |", "| --- | --- | --- | --- | --- |"]
    for kernels, runs in (("", figures), (", oneDNN off", figures["onednn_off"])):
        for model, label in SERVED.items():
            for batch, t in runs[model].items():
                yield (f"| {label}{kernels} | {batch} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} "
                       f"| {t['rows_per_sec']:,.0f} |")


# --- command line --------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m ppnet.bench", description=__doc__.splitlines()[0])
    cli.add_argument("--data", help="a prepared parquet log (default: the KuaiRand slice in ../shared/data)")
    cli.add_argument("--config", default=str(CONFIGS / "kuairand.toml"), help="TOML config for --data")
    cli.add_argument("--synthetic", action="store_true", help="also benchmark the embedded synthetic log")
    cli.add_argument("--seeds", type=int, default=3, help="training seeds per model (default 3)")
    cli.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    cli.add_argument("--smoke", action="store_true",
                     help=f"tiny synthetic log ({SMOKE_ROWS} rows), tiny model, 1 seed; ignores --data/--synthetic")
    cli.add_argument("--results", default=str(REPO / "bench" / "results"), help="directory for the JSON")
    return cli


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark, write ``RESULTS/<timestamp>.json``, print the markdown table; return the JSON path."""
    args = parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = REPO / "bench" / "tmp" / f"{stamp}-{os.getpid()}"
    work.mkdir(parents=True)
    started = time.perf_counter()
    result = {"timestamp": stamp, "args": vars(args), "versions": versions(),
              "machine": {**machine_info(), "matmul_peak_flops_per_sec": matmul_peak_flops()}}
    result["logs"] = {}
    for name, path, config in prepare_data(args, work):
        result["logs"][name] = bench_log(name, path, config, args, result["machine"]["matmul_peak_flops_per_sec"], work)
        # The best peak so far (each log re-measures it) is the machine's, for the next log and the report.
        result["machine"]["matmul_peak_flops_per_sec"] = result["logs"][name]["speed"]["matmul_peak_flops_per_sec"]
    result["seconds"] = time.perf_counter() - started
    out = Path(args.results) / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work)
    print(markdown(result))
    print(f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except PPNetError as err:
        sys.exit(f"ppnet.bench: error: {err}")
