"""A training run: validate inputs, compute statistics, fit, pick the best epoch, export, report.

Everything is written into ``RUN_DIR.partial/`` and renamed to ``RUN_DIR`` only when the run
has finished, so a directory named ``RUN_DIR`` is always a complete run. Rerunning the same
command after a crash resumes from the last backup in ``RUN_DIR.partial/backup``; once training
has ended, ``RUN_DIR.partial/fitted`` makes a rerun only score and export.

Run directory layout::

    config.json   the resolved config (overrides applied)
    run.json      config and data paths: a rerun resumes only the same run
    stats.json    vocabularies, numeric mean/std, input kinds
    epochs.jsonl  exact validation metrics of every epoch (across resumes)
    checkpoints/  best epoch's weights (by validation AUC)
    logs/         TensorBoard
    export/<v>/   the SavedModel (TF Serving layout)
    metrics.json  validation auc/gauc/logloss/rows, training examples_per_sec, ...
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

import ppnet
from ppnet import distribute
from ppnet.config import Config, config_from_dict, save_config
from ppnet.data.pipeline import EpochCursor, input_specs, make_dataset
from ppnet.data.schema import input_kinds
from ppnet.data.split import Split, check_labels, make_splits
from ppnet.data.tfrecord import tfrecord_dataset, write_tfrecord_shards
from ppnet.errors import PPNetError
from ppnet.files import replace_directory, write_text_atomic
from ppnet.evaluate import score_split
from ppnet.export import export_model
from ppnet.model import RankingModel, build_model
from ppnet.stats import Stats, compute_stats

log = logging.getLogger(__name__)

BEST_WEIGHTS = "checkpoints/best"
EPOCHS_FILE = "epochs.jsonl"
FITTED = "fitted"


class RunBackup(tf.keras.callbacks.BackupAndRestore):
    """Crash backups (every ``save_freq`` steps, or ``"epoch"``) that a rerun resumes from exactly.

    * First in the callback list, so the backup is restored before the other callbacks start:
      ``finished_epochs`` then says which epochs the rerun will not train again.
    * Keras resumes its epoch and step counters but restarts the data iterator from the first
      batch; the cursor is moved so the resumed epoch skips exactly the batches already trained
      (single process; a multi-worker run resumes at the next epoch of its stream).
    * An epoch's last backup marks it finished, so it is taken by ``EpochBackup`` at the end of
      the list, after validation, the best checkpoint and early stopping; Keras' own backup of the
      last batch would have marked it finished before it was scored.
    """

    def __init__(self, backup_dir: Path, save_freq: int | str, cursor: EpochCursor, steps_per_epoch: int):
        super().__init__(str(backup_dir), save_freq=save_freq, delete_checkpoint=False)
        self.cursor, self.steps_per_epoch = cursor, steps_per_epoch
        self.finished_epochs = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        epoch, step = self._training_state.maybe_load_initial_counters_from_ckpt(self.steps_per_epoch, 0,
                                                                                 mode="train")  # ModeKeys.TRAIN
        if epoch or step:
            log.info("resuming at epoch %d, step %d", epoch + 1, step)
        self.finished_epochs = epoch
        self.cursor.move_to(epoch, step)

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 < self.steps_per_epoch:
            super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        """Nothing here: see ``EpochBackup``."""


class EpochBackup(tf.keras.callbacks.Callback):
    """Takes ``backup``'s end-of-epoch backup; last in the callback list (see ``RunBackup``)."""

    def __init__(self, backup: RunBackup):
        super().__init__()
        self.backup = backup

    def on_epoch_end(self, epoch, logs=None):
        self.backup._backup(epoch=epoch)  # Keras' counters now say: resume at the next epoch


class BestCheckpoint(tf.keras.callbacks.ModelCheckpoint):
    """The best epoch's weights by ``val_auc``; an epoch must beat those finished before a resume."""

    def __init__(self, path: Path, finished_scores: Callable[[], list[float]]):
        super().__init__(str(path), monitor="val_auc", mode="max", save_best_only=True, save_weights_only=True)
        self.finished_scores = finished_scores

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best = max(self.finished_scores(), default=self.best)


class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
    """Early stopping on ``val_auc`` whose patience counts the epochs finished before a resume."""

    def __init__(self, patience: int, finished_scores: Callable[[], list[float]]):
        super().__init__(monitor="val_auc", mode="max", patience=patience)
        self.finished_scores = finished_scores

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for score in self.finished_scores():  # as Keras' on_epoch_end counts them
            self.wait += 1
            if self._is_improvement(score, self.best):
                self.best, self.wait = score, 0


class ValidationScore(tf.keras.callbacks.Callback):
    """Exact validation metrics after every epoch: ``val_auc``, ``val_gauc``, ``val_logloss``.

    Scores the whole validation split in this process (in a cluster, every worker computes the
    same numbers from the same weights), so model selection uses exact, global AUC rather than
    Keras' bucketed, per-replica streaming estimate.
    """

    def __init__(self, split: Split, kinds: dict[str, str], label: str, user_column: str,
                 epochs_file: Path | None):
        super().__init__()
        self.split, self.kinds, self.label, self.user_column = split, kinds, label, user_column
        self.epochs_file = epochs_file  # one JSON line per epoch; it survives crashes and resumes
        self.predict = None

    def on_train_begin(self, logs=None):
        self.predict = model_predictor(self.model, self.kinds)

    def on_epoch_end(self, epoch, logs=None):
        result = score_split(self.predict, self.split, self.kinds, self.label, self.user_column)
        scores = {f"val_{key}": result[key] for key in ("auc", "gauc", "logloss")}
        if logs is not None:
            logs.update(scores)
        if self.epochs_file is not None:
            with self.epochs_file.open("a") as file:
                file.write(json.dumps({"epoch": epoch + 1, **scores}) + "\n")
        log.info("epoch %d validation: auc %.4f gauc %.4f logloss %.4f", epoch + 1, result["auc"],
                 result["gauc"], result["logloss"])


class ThroughputMeter(tf.keras.callbacks.Callback):
    """Steady-state training examples/sec: from the end of each epoch's first step (tracing,
    warm-up excluded) to the end of the epoch, when Keras has waited for every step (under a
    parameter server steps only get scheduled before that). Listed first among the callbacks,
    so the per-epoch validation is not counted."""

    def __init__(self, batch_size: int):
        super().__init__()
        self._supports_tf_logs = True  # never reads logs: Keras need not wait for each step's values
        self.batch_size = batch_size
        self.seconds = 0.0
        self.steps = 0
        self._first: tuple[int, float] | None = None
        self._last: tuple[int, float] = (0, 0.0)

    @property
    def last_step(self) -> int:
        return self._last[0]

    def on_epoch_begin(self, epoch, logs=None):
        self._first = None

    def on_train_batch_end(self, batch, logs=None):
        self._last = (batch, time.perf_counter())
        self._first = self._first or self._last

    def on_epoch_end(self, epoch, logs=None):
        if self._first is not None:
            self.steps += self._last[0] - self._first[0]
            self.seconds += time.perf_counter() - self._first[1]

    @property
    def examples_per_sec(self) -> float | None:
        """``None`` if nothing was timed (say, a rerun that had nothing left to train)."""
        return self.steps * self.batch_size / self.seconds if self.seconds else None


def prepare_run_dir(out: Path, config: Config, inputs: dict, fresh: bool) -> Path:
    """The working directory ``out.partial``: resumed if it holds the same config, data and ppnet
    version, else new."""
    work = out.with_name(out.name + ".partial")
    identity = json.dumps({"config": config.to_dict(), "inputs": inputs, "ppnet": ppnet.__version__},
                          sort_keys=True)
    saved = work / "run.json"
    if work.exists() and not fresh:
        if saved.exists() and saved.read_text() == identity:
            log.info("resuming the interrupted run in %s", work)
            return work
        raise PPNetError(f"{work}: an interrupted run with a different config, data or ppnet version is "
                         "there; rerun the same command to resume, or pass --fresh to start over")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_config(config, work / "config.json")
    write_text_atomic(saved, identity)
    return work


def epoch_scores(work: Path) -> list[dict]:
    """Every finished epoch's validation scores, across resumes."""
    path = work / EPOCHS_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return list({line["epoch"]: line for line in lines}.values())  # an epoch rerun after a crash: its last score


def train(config: Config, data_path: str, out: str | Path, valid_path: str | None = None,
          overwrite: bool = False, fresh: bool = False, strategy: str = "local") -> dict:
    """Train on ``data_path`` and return the metrics written to ``RUN_DIR/metrics.json``.

    With ``strategy="multi_worker"`` every worker of the ``TF_CONFIG`` cluster runs this same
    call; only the chief writes metrics and the export (the others return ``{}``).
    """
    out = Path(out)
    role = distribute.current_role(strategy)
    if role.serves_only:
        distribute.serve(role)
        return {}
    if role.is_chief and out.exists():
        if not overwrite:
            raise PPNetError(f"{out}: run directory already exists; pass --overwrite to replace it")
        if not (out / "config.json").exists():
            raise PPNetError(f"{out}: not a ppnet run directory (no config.json); --overwrite only replaces runs")
    train_split, valid_split = make_splits(config, data_path, valid_path)
    label = config.data.label
    kinds = input_kinds(config, list(train_split.files) + list(valid_split.files))
    train_rows = check_labels(train_split, label)
    check_labels(valid_split, label, need_both_classes=True)
    inputs = {"data": str(data_path), "valid": None if valid_path is None else str(valid_path)}
    work, stats = setup_run(config, train_split, kinds, out, inputs, role, fresh)
    log.info("training on %d rows (%s), validating on %s", train_rows, train_split.description,
             valid_split.description)

    tf.keras.utils.set_random_seed(config.train.seed)
    dist = distribute.make_strategy(strategy)
    with dist.scope():
        model = build_model(config, stats)
    cursor = EpochCursor()
    train_ds = make_input(dist, role, config, train_split, kinds, cursor, train_rows, work)
    meter = ThroughputMeter(config.train.batch_size * role.count)
    # A sharded cluster input streams continuously: an epoch is one pass's worth of global batches.
    steps = -(-train_rows // (config.train.batch_size * role.count))
    validation = ValidationScore(valid_split, kinds, label, config.data.user_column,
                                 work / EPOCHS_FILE if role.is_chief else None)
    fitted = work / FITTED  # training ended (early stopping included): a rerun only scores and exports
    if fitted.exists() and not role.streamed:
        log.info("training had finished before the crash; scoring and exporting the best epoch")
    else:
        history = model.fit(train_ds, epochs=config.train.epochs, steps_per_epoch=steps if role.streamed else None,
                            callbacks=callbacks(config, work, validation, cursor, steps, meter, role),
                            verbose=1 if sys.stdout.isatty() else 2)
        losses = history.history.get("loss", [])
        if losses and not np.isfinite(losses[-1]):
            raise PPNetError(f"training loss became {losses[-1]} in epoch {len(losses)} (step {meter.last_step}); "
                             f"lower train.learning_rate or check the numeric features, then rerun with --fresh "
                             f"(backups taken before the NaN are in {work / 'backup'})")
        if role.is_chief:
            fitted.touch()
    if not role.is_chief:
        return {}
    final = build_model(config, stats) if role.streamed else model  # a plain local copy to score and export
    restore_best(final, work)
    metrics = score_split(model_predictor(final, kinds), valid_split, kinds, label, config.data.user_column)
    export_dir = export_model(final, work / "export")
    epochs = epoch_scores(work)
    metrics.update({
        "examples_per_sec": meter.examples_per_sec, "train_rows": train_rows, "workers": role.count,
        "epochs_run": len(epochs), "best_epoch": max(epochs, key=lambda e: e["val_auc"])["epoch"] if epochs else 0,
        "model": config.model.name, "gate_stop_gradient": config.model.gate_stop_gradient,
        "personal_ids_in_tower": config.model.personal_ids_in_tower,
        "export": str(Path("export") / export_dir.name),
    })
    if role.parameter_server:  # how each embedding table was split across the parameter servers
        metrics["table_shards"] = {layer.name: len(getattr(layer.embeddings, "variables", [layer.embeddings]))
                                   for layer in [*model.embeddings.values(), *model.gate_embeddings.values()]}
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for scratch in ("backup", "shards"):  # last: a crash before here still resumes
        shutil.rmtree(work / scratch, ignore_errors=True)
    fitted.unlink()
    replace_directory(work, out)
    return metrics


def setup_run(config: Config, train_split: Split, kinds: dict[str, str], out: Path, inputs: dict,
              role: distribute.Role, fresh: bool) -> tuple[Path, Stats]:
    """The chief computes the statistics and prepares the run directory; other workers wait for them."""
    if not role.is_chief:
        work = out.with_name(out.name + ".partial")
        return work, Stats.load(distribute.wait_for_file(work / "stats.json"))
    stats = compute_stats(config, train_split, kinds)
    work = prepare_run_dir(out, config, inputs, fresh)
    stats.save(work / "stats.json")
    return work, stats


def make_input(strategy: tf.distribute.Strategy, role: distribute.Role, config: Config, split: Split,
               kinds: dict[str, str], cursor: EpochCursor, rows: int, work: Path):
    """The training dataset; in a cluster each worker streams only its own shard of the files.

    ``train.batch_size`` is per worker, so the global batch is ``batch_size x workers``. Parameter-
    server workers read their shard from TFRecord files the chief writes into the run directory.
    """
    options = {"label": config.data.label, "batch_size": config.train.batch_size,
               "shuffle_buffer": config.data.shuffle_buffer, "seed": config.train.seed, "cursor": cursor}
    if not role.streamed:
        return make_dataset(split, kinds, rows=rows, **options)
    split = split.nonempty()
    empty = [i for i in range(role.count) if not split.shard(i, role.count).files]
    if empty:
        raise PPNetError(f"{split.description}: worker(s) {empty} of {role.count} would get no training rows; "
                         "write the log in more files or row groups, or use fewer workers")
    if role.parameter_server:
        shards = [str(p) for p in write_tfrecord_shards(split, kinds, options["label"], options["batch_size"],
                                                        role.count, work / "shards", config.train.seed)]
        return tf.keras.utils.experimental.DatasetCreator(
            lambda context: tfrecord_dataset(shards[context.input_pipeline_id], kinds, options["label"]))
    return strategy.distribute_datasets_from_function(lambda context: make_dataset(
        split.shard(context.input_pipeline_id, context.num_input_pipelines), kinds, repeat=True, **options))


def callbacks(config: Config, work: Path, validation: ValidationScore, cursor: EpochCursor,
              steps_per_epoch: int, meter: ThroughputMeter, role: distribute.Role) -> list[tf.keras.callbacks.Callback]:
    """Backups for crash-resume, best-epoch checkpoint, early stopping, NaN guard, TensorBoard.

    Mid-epoch resume needs each pass over the data to be one epoch; a sharded multi-worker stream
    is continuous, so there backups are taken at the end of every epoch. A parameter-server run
    has no backups and restarts from its first epoch.
    """
    every = 0 if role.streamed else config.train.backup_every_steps
    backup = None if role.parameter_server else RunBackup(work / "backup", every if every > 0 else "epoch",
                                                          cursor, steps_per_epoch)

    def finished_scores() -> list[float]:
        """val_auc of the epochs a resumed run does not train again (an epoch scored but not backed
        up before a crash is trained and scored anew)."""
        finished = backup.finished_epochs if backup else 0
        return [e["val_auc"] for e in epoch_scores(work) if e["epoch"] <= finished]

    # Under a parameter server step logs are remote values: NaN is caught per epoch, after fit.
    per_step = [] if role.parameter_server else [tf.keras.callbacks.TerminateOnNaN()]
    return [
        *([backup] if backup else []),  # first: restores the backup before the others start
        meter,  # its epoch ends before the validation below
        validation,  # before the checkpoint and early-stopping callbacks, which read the val_auc it adds
        BestCheckpoint(work / BEST_WEIGHTS, finished_scores),
        ResumableEarlyStopping(config.train.early_stopping_patience, finished_scores),
        *([EpochBackup(backup)] if backup else []),  # marks the epoch finished: after it is scored and saved
        *per_step,
        tf.keras.callbacks.TensorBoard(str(work / "logs"), update_freq="epoch" if role.parameter_server else 100,
                                       profile_batch=0),
    ]


def model_predictor(model: tf.keras.Model, kinds: dict[str, str]):
    """numpy feature batch → probabilities, through one ``tf.function`` traced once for any batch size."""
    predict = tf.function(lambda features: tf.sigmoid(model(features, training=False)),
                          input_signature=[input_specs(kinds)])
    return lambda features: predict(features).numpy()


def load_run(run_dir: str | Path) -> RankingModel:
    """Rebuild a finished run's model with its best weights, for inference (``ppnet export``, the
    bench): no optimizer is built, and the checkpoint's optimizer slots are skipped."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise PPNetError(f"{run_dir}: not a run directory (no config.json)")
    config = config_from_dict(json.loads(config_path.read_text()), source=str(config_path))
    model = build_model(config, Stats.load(run_dir / "stats.json"), compile=False)
    if not (run_dir / "checkpoints").exists():
        raise PPNetError(f"{run_dir}: no checkpoints/ (the run did not finish an epoch)")
    restore_best(model, run_dir)
    return model


def restore_best(model: RankingModel, run_dir: Path) -> None:
    """Load the run's best weights into ``model``; refuse a checkpoint that lacks any of its weights.

    Without the check, a checkpoint from another model layout would restore silently in part and
    leave the rest at random initial values.
    """
    try:
        restored = model.load_weights(str(run_dir / BEST_WEIGHTS))
    except tf.errors.NotFoundError:
        raise PPNetError(f"{run_dir}: no best checkpoint in {BEST_WEIGHTS} (no epoch was scored)") from None
    restored.expect_partial()  # the optimizer's slots are in the checkpoint but not needed to score or export
    try:
        restored.assert_existing_objects_matched()
    except AssertionError:
        raise PPNetError(f"{run_dir}: its checkpoint does not hold this model's weights (written by another "
                         f"ppnet version? this is {ppnet.__version__}); export with the version that trained "
                         "it, or retrain") from None
