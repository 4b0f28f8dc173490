"""A training run: validate inputs, compute statistics, fit, pick the best epoch, export, report.

What the run writes and how a rerun resumes it is ``ppnet.rundir``; the callbacks that score,
checkpoint and back up each epoch are ``ppnet.callbacks``. This module decides what this process
does in a cluster (``Duties``, once) and runs the steps in order.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from ppnet import distribute, precision
from ppnet.callbacks import ThroughputMeter, ValidationScore, training_callbacks
from ppnet.config import Config
from ppnet.data.pipeline import EpochCursor, make_dataset
from ppnet.data.schema import fingerprint, input_kinds
from ppnet.data.split import Split, check_labels, holds_out, make_splits
from ppnet.data.tfrecord import tfrecord_dataset, write_tfrecord_shards
from ppnet.errors import PPNetError
from ppnet.evaluate import model_predictor, score_split
from ppnet.export import export_model
from ppnet.files import exclusive_lock
from ppnet.model import RankingModel, build_model, weight_bytes
from ppnet.rundir import (
    BACKUP,
    EPOCHS_FILE,
    FITTED,
    SHARDS,
    check_replaceable,
    epoch_scores,
    finish_run,
    partial_dir,
    prepare_run_dir,
    restore_best,
    run_id,
    run_identity,
)
from ppnet.stats import Stats, compute_stats
from ppnet.warmstart import Parent, check_compatible, check_kinds, warm_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Duties:
    """What this process does in a training run, decided once from its cluster role.

    * ``owns_run``: computes the statistics, writes the run directory, the per-epoch validation
      log and the export (the chief; the other workers read its ``stats.json`` and train).
    * ``input``: ``"local"`` (the whole split, epochs of one pass), ``"sharded"`` (each worker
      streams its own files pass after pass: epochs of a fixed number of steps) or ``"tfrecord"``
      (parameter-server workers read shards the chief writes).
    * ``backup_every``: crash backups every that many steps, ``"epoch"``, or ``None``. Mid-epoch
      resume needs each pass over the data to be one epoch, so a stream backs up per epoch; a
      parameter-server run has no backups and restarts from its first epoch.
    * ``per_step_logs``: step logs are local values (not under a parameter server).
    * ``workers``: how many workers train (each reads its own shard; the global batch is
      ``train.batch_size`` times this).
    """

    owns_run: bool
    input: str
    backup_every: int | str | None
    per_step_logs: bool
    workers: int = 1

    @classmethod
    def of(cls, role: distribute.Role, config: Config) -> Duties:
        every = config.train.backup_every_steps
        if role.parameter_server:
            return cls(role.is_chief, "tfrecord", None, per_step_logs=False, workers=role.count)
        if role.streamed:
            return cls(role.is_chief, "sharded", "epoch", per_step_logs=True, workers=role.count)
        return cls(role.is_chief, "local", every if every > 0 else "epoch", per_step_logs=True)

    @property
    def streamed(self) -> bool:
        return self.input != "local"


def train(
    config: Config,
    data_path: str,
    out: str | Path,
    valid_path: str | None = None,
    overwrite: bool = False,
    fresh: bool = False,
    strategy: str = "local",
    init_from: str | Path | None = None,
    init_optimizer: bool = True,
) -> dict:
    """Train on ``data_path`` and return the metrics written to ``RUN_DIR/metrics.json``.

    With ``strategy="multi_worker"`` every worker of the ``TF_CONFIG`` cluster runs this same
    call; only the chief writes metrics and the export (the others return ``{}``). ``init_from``
    continues a finished run (``ppnet.warmstart``): its best weights, Adam state unless
    ``init_optimizer`` is false, and its vocabularies, grown by the new data's ids.
    """
    use_threads(config)
    if config.train.refit and not holds_out(config, valid_path):
        raise PPNetError(
            "train.refit passes over the validation rows, and data.valid_last = 0 holds none out: "
            "set data.valid_last >= 1, pass --valid, or set train.refit = false"
        )
    parent = None
    if init_from is not None:
        parent = Parent.load(init_from)
        check_compatible(parent, config)
    out = Path(out)
    role = distribute.current_role(strategy)
    if role.serves_only:
        distribute.serve(role)
        return {}
    duties = Duties.of(role, config)
    start = Start(parent, init_optimizer)
    if not duties.owns_run:
        return run(config, data_path, out, valid_path, fresh, strategy, duties, start)
    with exclusive_lock(out, "run directory"):  # one process per run, for the whole run
        check_replaceable(out, overwrite)
        return run(config, data_path, out, valid_path, fresh, strategy, duties, start)


def use_threads(config: Config) -> None:
    """Applies ``train.intra_op_threads`` to this process's TensorFlow runtime, if it can.

    TensorFlow's default lets every op split its work over all cores while independent ops also
    run side by side; on a few cores, with a model of many small layers (PEPNet's towers and
    gates), the threads then mostly wait on one another, and one thread per op trains faster
    (docs/performance.md). TensorFlow fixes the setting when its runtime starts: in a process that
    already ran TensorFlow with another value (a notebook, the bench) the run goes on with that
    one, said in the log and recorded in ``metrics.json``; threads change speed, not results.
    """
    wanted = config.train.intra_op_threads
    current = tf.config.threading.get_intra_op_parallelism_threads()
    if wanted == current:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(wanted)
    except RuntimeError:
        log.warning(
            "train.intra_op_threads = %d not applied: TensorFlow already runs in this process with %d "
            "(0: its default); it applies in a fresh process (ppnet train)",
            wanted,
            current,
        )


@dataclass(frozen=True)
class Start:
    """Where training starts: fresh weights, or a parent run's (``--init-from``)."""

    parent: Parent | None = None
    with_optimizer: bool = True

    def record(self) -> dict:
        """For ``run.json`` and ``metrics.json``: what the run continued, if anything."""
        if self.parent is None:
            return {}
        return {"init_from": str(self.parent.run_dir.resolve()), "init_optimizer": self.with_optimizer}


@dataclass(frozen=True)
class RunData:
    """The rows a run reads: its splits (no validation split when nothing is held out), their
    columns' input kinds and their row counts, labels checked."""

    train: Split
    valid: Split | None
    kinds: dict[str, str]
    train_rows: int
    valid_rows: int

    @classmethod
    def read(cls, config: Config, data_path: str, valid_path: str | None) -> RunData:
        train_split, valid_split = make_splits(config, data_path, valid_path)
        # first: it names a file's missing column, labels included
        kinds = input_kinds(config, split_files(train_split, valid_split))
        train_rows = check_labels(train_split, config.tasks)
        valid_rows = check_labels(valid_split, config.tasks, need_both_classes=True) if valid_split else 0
        return cls(train_split, valid_split, kinds, train_rows, valid_rows)

    @property
    def files(self) -> list[Path]:
        return split_files(self.train, self.valid)


def split_files(train: Split, valid: Split | None) -> list[Path]:
    """The files of a run's splits, training first."""
    return [*train.files, *(valid.files if valid else ())]


def run(
    config: Config,
    data_path: str,
    out: Path,
    valid_path: str | None,
    fresh: bool,
    strategy: str,
    duties: Duties,
    start: Start,
) -> dict:
    """``train``'s steps, once this process knows its duties (and, if it owns the run, holds its lock)."""
    data = RunData.read(config, data_path, valid_path)
    inputs = {
        "data": str(data_path),
        "valid": None if valid_path is None else str(valid_path),
        "files": fingerprint(data.files),
        **start.record(),
    }
    if start.parent is not None:
        check_kinds(start.parent, data.kinds)
    work, stats = setup_run(config, data, out, inputs, duties, fresh, start)
    validating = data.valid.description if data.valid else "nothing (data.valid_last = 0: the last epoch is kept)"
    log.info("training on %d rows (%s), validating on %s", data.train_rows, data.train.description, validating)

    tf.keras.utils.set_random_seed(config.train.seed)
    dist = distribute.make_strategy(strategy)
    chosen = precision.choose(config.train.precision)
    log.info("towers compute in %s (%s)", chosen.policy, chosen.reason)
    per_call = steps_per_call(config, epoch_steps(config, data, duties))
    with dist.scope():
        model = build_model(config, stats, precision=chosen.policy, steps_per_call=per_call)
    if start.parent is not None:  # every worker reads the parent (on the filesystem they share)
        warm_start(model, start.parent, start.with_optimizer)
    meter = ThroughputMeter(config.train.batch_size * duties.workers)
    fitted = work / FITTED  # training ended (early stopping included): a rerun only scores and exports
    # A model computing in bfloat16 is scored every epoch through a float32 copy, as it will be served.
    scorer = build_model(config, stats) if chosen.policy != precision.FLOAT32 else None
    reports: dict[int, dict] = {}  # each epoch's validation metrics, of the epochs this process trained
    if fitted.exists() and not duties.streamed:
        log.info("training had finished before the crash; scoring and exporting the best epoch")
    else:
        reports = fit(model, config, dist, duties, data, work, meter, per_call, scorer)
        if duties.owns_run:
            fitted.touch()
    if not duties.owns_run:
        return {}
    # What is exported (and scored, after a crash): the float32 model, a plain local copy (under
    # tf.distribute or bfloat16, and to refit: Keras' backup callback leaves the trained model unable
    # to fit again).
    copy = scorer is not None or duties.streamed or config.train.refit
    final = (scorer or build_model(config, stats)) if copy else model
    metrics = {
        **export_best(final, config, data, reports, work),
        "examples_per_sec": meter.examples_per_sec,
        "train_rows": data.train_rows,
        "workers": duties.workers,
        "select_by": config.train.select_by,
        "model": config.model.name,
        "precision": {"towers": chosen.policy, "why": chosen.reason},
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        **start.record(),
        **gate_settings(config),
    }
    if duties.input == "tfrecord":  # how each embedding table was split across the parameter servers
        metrics["table_shards"] = {
            layer.name: len(getattr(layer.embeddings, "variables", [layer.embeddings]))
            for layer in model.embedding_tables()
        }
    finish_run(work, out, metrics)
    log.info("run directory: %s (export %s)", out, out / metrics["export"])
    return metrics


def export_best(final: RankingModel, config: Config, data: RunData, reports: dict[int, dict], work: Path) -> dict:
    """Load the chosen epoch into ``final``, refit it if configured, export it; its metrics.

    The chosen epoch was scored when it ended, with these weights (``reports``); it is scored again
    only if that was before a crash (its full metrics are not kept on disk). Returns the validation
    metrics (none when nothing was held out) with ``epochs_run``, ``best_epoch``, ``export``
    (relative to the run directory), ``splits`` and, after a refit, ``refit``.
    """
    if config.train.refit:  # slots for the best epoch's optimizer state to restore into
        final.optimizer.build(final.trainable_variables)
    restore_best(final, work)
    epochs_run, best_epoch = chosen_epoch(epoch_scores(work), config.train.epochs, validated=data.valid is not None)
    if data.valid is None:
        metrics = {}
    elif best_epoch in reports:
        metrics = dict(reports[best_epoch])
    else:
        predict = model_predictor(final, data.kinds)
        metrics = score_split(predict, data.valid, data.kinds, config.tasks, config.data.user_column)
    splits = {"train": data.train.to_json(), **({"valid": data.valid.to_json()} if data.valid else {})}
    if config.train.refit:
        refit(final, config, data)
        splits["refit"] = splits["valid"]  # the export has trained on these rows too
        metrics["refit"] = {"rows": data.valid_rows, "split": data.valid.description}
    export_dir = export_model(final, work / "export", splits=splits)
    export = str(Path("export") / export_dir.name)
    return {**metrics, "epochs_run": epochs_run, "best_epoch": best_epoch, "export": export, "splits": splits}


def chosen_epoch(epochs: list[dict], configured: int, validated: bool) -> tuple[int, int]:
    """(epochs run, the epoch exported): the best by ``val_score`` among the scored ``epochs``;
    without validation rows every configured epoch runs (nothing stops early) and the last is kept."""
    if not validated:
        return configured, configured
    return len(epochs), max(epochs, key=lambda e: e["val_score"])["epoch"] if epochs else 0


def refit(model: tf.keras.Model, config: Config, data: RunData) -> None:
    """``train.refit``: one pass over the validation rows from the best epoch's weights and optimizer
    state, so the export has seen the newest day (the one a ranker most needs). Run by this process
    on a local model, whatever the strategy: one day's rows."""
    log.info("refitting the best epoch on the validation rows (%d, %s)", data.valid_rows, data.valid.description)
    dataset = make_dataset(
        data.valid,
        data.kinds,
        config.target_columns,
        config.train.batch_size,
        config.data.shuffle_buffer,
        config.train.seed,
        rows=data.valid_rows,
    )
    model.fit(dataset, epochs=1, verbose=1 if sys.stdout.isatty() else 2)


def gate_settings(config: Config) -> dict:
    """The gate settings a run used, for ``metrics.json``: none for the models without gates."""
    if not config.model.gated:
        return {}
    settings = {
        "gate_stop_gradient": config.model.gate_stop_gradient,
        "personal_ids_in_tower": config.model.personal_ids_in_tower,
    }
    return {**settings, "task_sharing": config.model.task_sharing} if len(config.tasks) > 1 else settings


def setup_run(
    config: Config,
    data: RunData,
    out: Path,
    inputs: dict,
    duties: Duties,
    fresh: bool,
    start: Start,
) -> tuple[Path, Stats]:
    """The chief computes the statistics and prepares the run directory; other workers wait for them."""
    run = run_id(run_identity(config, inputs))
    if not duties.owns_run:
        work = partial_dir(out)
        return work, Stats.load(distribute.wait_for_file(work / "stats.json", lambda p: Stats.load(p).run == run))
    stats = compute_stats(config, data.train, data.kinds, start.parent.stats if start.parent else None)
    check_memory(config, stats)  # before the model is built and before the run directory exists
    stats.run = run
    work = prepare_run_dir(out, config, inputs, fresh)
    stats.save(work / "stats.json")
    return work, stats


def check_memory(config: Config, stats: Stats) -> None:
    """Refuse, with the key to change, a model whose weights and optimizer slots alone would not
    fit ``train.memory_limit_gib`` (default: this machine's memory): it would otherwise grow until
    the machine ran out, long after the run started."""
    parts = weight_bytes(config, stats)
    limit = config.train.memory_limit_gib * 2**30 or os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if sum(parts.values()) > limit:
        key = max(parts, key=parts.get)
        raise PPNetError(
            f"the model needs about {sum(parts.values()) / 2**30:.1f} GiB for its weights and optimizer state "
            f"({key}: {parts[key] / 2**30:.1f} GiB), more than {limit / 2**30:.1f} GiB "
            f"({'train.memory_limit_gib' if config.train.memory_limit_gib else 'this machine'}); "
            f"make {key} smaller or raise train.memory_limit_gib"
        )


# A run shorter than this trains one step per call: the multi-step train function takes longer
# to build than it saves over so few steps (docs/performance.md, "Steps per call")
SHORT_RUN_STEPS = 100


def epoch_steps(config: Config, data: RunData, duties: Duties) -> int:
    """Training steps of one epoch. A sharded cluster input streams continuously: an epoch is
    one pass's worth of global batches."""
    return -(-data.train_rows // (config.train.batch_size * duties.workers))


def steps_per_call(config: Config, steps_per_epoch: int) -> int:
    """Training steps per call of Keras' train function: ``train.steps_per_execution``, or one for
    a run of fewer than ``SHORT_RUN_STEPS`` steps (a daily continuation on a small log), which
    would not win back the time the multi-step function takes to build."""
    long_run = steps_per_epoch * config.train.epochs >= SHORT_RUN_STEPS
    return config.train.steps_per_execution if long_run else 1


def fit(
    model: tf.keras.Model,
    config: Config,
    dist: tf.distribute.Strategy,
    duties: Duties,
    data: RunData,
    work: Path,
    meter: ThroughputMeter,
    per_call: int,
    scorer: tf.keras.Model | None = None,
) -> dict[int, dict]:
    """``model.fit`` with the run's callbacks; a loss that became NaN or infinite is a one-line error.
    ``per_call``: the training steps per call of the train function ``model`` was compiled with
    (``steps_per_call``). ``scorer``: the float32 model each epoch is scored with
    (``ValidationScore``), if not ``model``. Returns the validation metrics of each epoch it
    trained, by epoch number."""
    cursor = EpochCursor()
    train_ds = make_input(dist, duties, config, data.train, data.kinds, cursor, data.train_rows, work)
    steps = epoch_steps(config, data, duties)
    validation = (
        ValidationScore(
            data.valid,
            data.kinds,
            config.tasks,
            config.data.user_column,
            work / EPOCHS_FILE if duties.owns_run else None,
            config.train.select_by,
            scorer,
        )
        if data.valid is not None
        else None  # nothing held out: no epoch to choose, the last is kept
    )
    callbacks = training_callbacks(
        work,
        patience=config.train.early_stopping_patience,
        backup_every=duties.backup_every,
        cursor=cursor,
        steps_per_epoch=steps,
        steps_per_call=per_call,
        meter=meter,
        validation=validation,
        per_step_logs=duties.per_step_logs,
    )
    history = model.fit(
        train_ds,
        epochs=config.train.epochs,
        steps_per_epoch=steps if duties.streamed else None,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise PPNetError(
            f"training loss became {losses[-1]} in epoch {len(losses)} (step {meter.last_step}); "
            f"lower train.learning_rate or check the numeric features, then rerun with --fresh "
            f"(backups taken before the NaN are in {work / BACKUP})"
        )
    return validation.reports if validation else {}


def make_input(
    strategy: tf.distribute.Strategy,
    duties: Duties,
    config: Config,
    split: Split,
    kinds: dict[str, str],
    cursor: EpochCursor,
    rows: int,
    work: Path,
):
    """The training dataset; in a cluster each worker streams only its own shard of the files.

    ``train.batch_size`` is per worker, so the global batch is ``batch_size x workers``. Parameter-
    server workers read their shard from TFRecord files the chief writes into the run directory.
    """
    options = {
        "targets": config.target_columns,
        "batch_size": config.train.batch_size,
        "shuffle_buffer": config.data.shuffle_buffer,
        "seed": config.train.seed,
        "cursor": cursor,
    }
    if duties.input == "local":
        return make_dataset(split, kinds, rows=rows, **options)
    split = split.nonempty()
    empty = [i for i in range(duties.workers) if not split.shard(i, duties.workers).files]
    if empty:
        raise PPNetError(
            f"{split.description}: worker(s) {empty} of {duties.workers} would get no training rows; "
            "write the log in more files or row groups, or use fewer workers"
        )
    if duties.input == "tfrecord":
        shards = [
            str(p)
            for p in write_tfrecord_shards(
                split,
                kinds,
                options["targets"],
                options["batch_size"],
                duties.workers,
                work / SHARDS,
                config.train.seed,
            )
        ]
        return tf.keras.utils.experimental.DatasetCreator(
            lambda context: tfrecord_dataset(shards[context.input_pipeline_id], kinds, options["targets"])
        )
    return strategy.distribute_datasets_from_function(
        lambda context: make_dataset(
            split.shard(context.input_pipeline_id, context.num_input_pipelines), kinds, repeat=True, **options
        )
    )
