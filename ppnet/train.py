"""A training run: validate inputs, compute statistics, fit, pick the best epoch, export, report.

Everything is written into ``RUN_DIR.partial/`` and renamed to ``RUN_DIR`` only when the run
has finished, so a directory named ``RUN_DIR`` is always a complete run. Rerunning the same
command after a crash resumes from the last backup in ``RUN_DIR.partial/backup``.

Run directory layout::

    config.json   the resolved config (overrides applied)
    stats.json    vocabularies, numeric mean/std, input kinds
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

import numpy as np
import tensorflow as tf

from ppnet import data
from ppnet.config import Config, config_from_dict, save_config
from ppnet.errors import PPNetError
from ppnet.evaluate import score_split
from ppnet.export import export_model
from ppnet.model import RankingModel, build_model
from ppnet.stats import Stats, compute_stats

log = logging.getLogger(__name__)

BEST_WEIGHTS = "checkpoints/best"


class ResumeDataPosition(tf.keras.callbacks.Callback):
    """After ``BackupAndRestore`` restored a backup, start the data where the backup was taken.

    Keras resumes its epoch and step counters but restarts the data iterator from the first
    batch; moving the cursor makes the resumed epoch skip exactly the batches already trained.
    Must come after ``BackupAndRestore`` in the callback list.
    """

    def __init__(self, cursor: data.EpochCursor, steps_per_epoch: int):
        super().__init__()
        self.cursor, self.steps_per_epoch = cursor, steps_per_epoch

    def on_train_begin(self, logs=None):
        state = getattr(self.model, "_training_state", None)
        if state is not None:
            epoch, step = state.maybe_load_initial_counters_from_ckpt(self.steps_per_epoch, 0, mode="train")  # ModeKeys.TRAIN
            if epoch or step:
                log.info("resuming at epoch %d, step %d", epoch + 1, step)
            self.cursor.move_to(epoch, step)


class ThroughputMeter(tf.keras.callbacks.Callback):
    """Steady-state training examples/sec: each epoch's first step (tracing, warm-up) is excluded."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.seconds = 0.0
        self.steps = 0
        self._start: float | None = None
        self._epoch_steps = 0
        self.last_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._epoch_steps = None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.last_step = batch
        if self._start is None:
            self._start = time.perf_counter()
        else:
            self._epoch_steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.steps += self._epoch_steps

    @property
    def examples_per_sec(self) -> float:
        return self.steps * self.batch_size / self.seconds if self.seconds else float("nan")


def prepare_run_dir(out: Path, config: Config, overwrite: bool, fresh: bool) -> Path:
    """The working directory ``out.partial``: resumed if it holds the same config, else new."""
    if out.exists() and not overwrite:
        raise PPNetError(f"{out}: run directory already exists; pass --overwrite to replace it")
    work = out.with_name(out.name + ".partial")
    saved = work / "config.json"
    if work.exists() and not fresh:
        if saved.exists() and json.loads(saved.read_text()) == json.loads(json.dumps(config.to_dict())):
            log.info("resuming the interrupted run in %s", work)
            return work
        raise PPNetError(f"{work}: an interrupted run with a different config is there; "
                         "rerun with the same config to resume, or pass --fresh to start over")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_config(config, saved)
    return work


def train(config: Config, data_path: str, out: str | Path, valid_path: str | None = None,
          overwrite: bool = False, fresh: bool = False) -> dict:
    """Train on ``data_path`` and return the metrics written to ``RUN_DIR/metrics.json``."""
    out = Path(out)
    train_split, valid_split = data.make_splits(config, data_path, valid_path)
    label = config.data.label
    kinds = data.input_kinds(config, list(train_split.files) + list(valid_split.files))
    train_rows = data.check_labels(train_split, label)
    data.check_labels(valid_split, label, need_both_classes=True)
    stats = compute_stats(config, train_split, kinds)
    work = prepare_run_dir(out, config, overwrite, fresh)
    stats.save(work / "stats.json")
    log.info("training on %d rows (%s), validating on %s", train_rows, train_split.description,
             valid_split.description)

    tf.keras.utils.set_random_seed(config.train.seed)
    model = build_model(config, stats)
    batch = config.train.batch_size
    cursor = data.EpochCursor()
    train_ds = data.make_dataset(train_split, kinds, label, batch, config.data.shuffle_buffer, config.train.seed,
                                 cursor, rows=train_rows)
    valid_ds = data.make_dataset(valid_split, kinds, label, max(batch, 4096))
    meter = ThroughputMeter(batch)
    resume = ResumeDataPosition(cursor, steps_per_epoch=-(-train_rows // batch))
    history = model.fit(train_ds, validation_data=valid_ds, epochs=config.train.epochs,
                        callbacks=callbacks(config, work, resume, meter), verbose=1 if sys.stdout.isatty() else 2)
    losses = history.history.get("loss", [])
    if model.stop_training and losses and not np.isfinite(losses[-1]):
        raise PPNetError(f"training loss became {losses[-1]} in epoch {len(losses)} (step {meter.last_step}); "
                         "lower train.learning_rate or check the numeric features; the last good backup is kept "
                         f"in {work / 'backup'} (rerun with --fresh after changing the config)")
    shutil.rmtree(work / "backup", ignore_errors=True)

    model.load_weights(str(work / BEST_WEIGHTS)).expect_partial()
    valid_auc = history.history.get("val_auc", [])
    metrics = score_split(model_predictor(model), valid_split, kinds, label, config.data.user_column)
    export_dir = export_model(model, work / "export")
    metrics.update({
        "examples_per_sec": meter.examples_per_sec, "train_rows": train_rows,
        "epochs_run": len(losses), "best_epoch": int(np.argmax(valid_auc)) + 1 if valid_auc else 0,
        "model": config.model.name, "gate_stop_gradient": config.model.gate_stop_gradient,
        "export": str(Path("export") / export_dir.name),
    })
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return metrics


def callbacks(config: Config, work: Path, resume: ResumeDataPosition,
              meter: ThroughputMeter) -> list[tf.keras.callbacks.Callback]:
    """Backups for crash-resume, best-epoch checkpoint, early stopping, NaN guard, TensorBoard."""
    every = config.train.backup_every_steps
    return [
        tf.keras.callbacks.BackupAndRestore(str(work / "backup"), save_freq=every if every > 0 else "epoch",
                                            delete_checkpoint=False),  # kept after a NaN; removed on success
        resume,
        tf.keras.callbacks.ModelCheckpoint(str(work / BEST_WEIGHTS), monitor="val_auc", mode="max",
                                           save_best_only=True, save_weights_only=True),
        tf.keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                         patience=config.train.early_stopping_patience),
        tf.keras.callbacks.TerminateOnNaN(),
        tf.keras.callbacks.TensorBoard(str(work / "logs"), update_freq=100, profile_batch=0),
        meter,
    ]


def model_predictor(model: RankingModel):
    """numpy feature batch → probabilities, through a compiled ``tf.function``."""
    predict = tf.function(lambda features: tf.sigmoid(model(features, training=False)), reduce_retracing=True)
    return lambda features: predict(features).numpy()


def load_run(run_dir: str | Path) -> RankingModel:
    """Rebuild a finished run's model with its best weights (for ``ppnet export``)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise PPNetError(f"{run_dir}: not a run directory (no config.json)")
    config = config_from_dict(json.loads(config_path.read_text()), source=str(config_path))
    model = build_model(config, Stats.load(run_dir / "stats.json"))
    if not (run_dir / "checkpoints").exists():
        raise PPNetError(f"{run_dir}: no checkpoints/ (the run did not finish an epoch)")
    model.load_weights(str(run_dir / BEST_WEIGHTS)).expect_partial()
    return model
