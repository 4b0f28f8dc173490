"""The Keras callbacks of a training run, and the one function that puts them in order.

Order matters, because Keras calls each hook on the callbacks in list order and several of them
read what an earlier one did in the same hook (``training_callbacks`` lists the reasons):

1. ``RunBackup`` restores a crash backup before anything else starts;
2. ``ThroughputMeter`` stops its clock before the epoch is validated;
3. ``ValidationScore`` adds ``val_score`` (and each task's metrics) to the epoch's logs;
4. ``BestCheckpoint`` and 5. ``ResumableEarlyStopping`` read that ``val_score``;
6. ``EpochBackup`` marks the epoch finished only once it is scored and saved;
7. ``TerminateOnNaN`` and 8. ``TensorBoard`` only watch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from ppnet.config import Task
from ppnet.data.pipeline import EpochCursor
from ppnet.data.split import Split
from ppnet.evaluate import model_predictor, score_split
from ppnet.model import unsharded_weights
from ppnet.rundir import BACKUP, BEST_WEIGHTS, epoch_scores
from ppnet.tf_private import mark_last_step, resume_counters, skip_log_sync, take_backup

log = logging.getLogger(__name__)


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
    * With several steps per call of the train function (``train.steps_per_execution``) Keras
      counts ``save_freq`` in calls, so the interval in steps is rounded up to whole calls; a
      backup resumes after the call's last step (Keras would record its first, and a resumed run
      would train the call's other steps twice).
    """

    def __init__(
        self, backup_dir: Path, save_freq: int | str, cursor: EpochCursor, steps_per_epoch: int, steps_per_call: int
    ):
        calls = -(-save_freq // steps_per_call) if isinstance(save_freq, int) else save_freq
        super().__init__(str(backup_dir), save_freq=calls, delete_checkpoint=False)
        self.cursor, self.steps_per_epoch = cursor, steps_per_epoch
        self.finished_epochs = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        epoch, step = resume_counters(self, self.steps_per_epoch)
        if epoch or step:
            log.info("resuming at epoch %d, step %d", epoch + 1, step)
        self.finished_epochs = epoch
        self.cursor.move_to(epoch, step)

    def on_train_batch_begin(self, batch, logs=None):
        """Nothing here: the step a backup resumes after is the call's last, known at its end."""

    def on_train_batch_end(self, batch, logs=None):
        mark_last_step(self, batch)  # ``batch``: the last step of this call of the train function
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
        take_backup(self.backup)  # Keras' counters now say: resume at the next epoch


class BestCheckpoint(tf.keras.callbacks.ModelCheckpoint):
    """The best epoch's weights by ``val_score``; an epoch must beat those finished before a resume."""

    def __init__(self, path: Path, finished_scores: Callable[[], list[float]]):
        super().__init__(str(path), monitor="val_score", mode="max", save_best_only=True, save_weights_only=True)
        self.finished_scores = finished_scores

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best = max(self.finished_scores(), default=self.best)


class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
    """Early stopping on ``val_score`` whose patience counts the epochs finished before a resume."""

    def __init__(self, patience: int, finished_scores: Callable[[], list[float]]):
        super().__init__(monitor="val_score", mode="max", patience=patience)
        self.finished_scores = finished_scores

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for score in self.finished_scores():  # as Keras' on_epoch_end counts them
            self.wait += 1
            if self.monitor_op(score - self.min_delta, self.best):
                self.best, self.wait = score, 0


class ValidationScore(tf.keras.callbacks.Callback):
    """Exact validation metrics after every epoch, and ``val_score``, which selects the best epoch.

    Logs ``val_auc``, ``val_gauc`` and ``val_logloss`` of the first task and, with several tasks,
    ``val_<metric>_<task>`` of each. ``val_score`` follows ``select_by``: one task's AUC, or the
    mean AUC over the tasks (``"mean"``). Scores the whole validation split in this process (in a
    cluster, every worker computes the same numbers from the same weights), so model selection
    uses exact, global AUC rather than Keras' bucketed, per-replica streaming estimate.

    ``scorer``, when given, is a float32 copy of the model that receives the trained weights before
    each epoch is scored: a model trained in bfloat16 is then selected by the scores of what its
    export (float32) will serve.

    ``reports`` keeps each epoch's full metrics by epoch number: the best epoch's are the run's
    ``metrics.json`` without scoring the split a second time.
    """

    def __init__(
        self,
        split: Split,
        kinds: dict[str, str],
        tasks: list[Task],
        user_column: str,
        epochs_file: Path | None,
        select_by: str = "mean",
        scorer: tf.keras.Model | None = None,
    ):
        super().__init__()
        self.split, self.kinds, self.tasks, self.user_column = split, kinds, tasks, user_column
        self.epochs_file = epochs_file  # one JSON line per epoch; it survives crashes and resumes
        self.select_by = select_by
        self.scorer = scorer
        self.predict = None
        self.reports: dict[int, dict] = {}

    def on_train_begin(self, logs=None):
        self.predict = model_predictor(self.scorer or self.model, self.kinds)

    def on_epoch_end(self, epoch, logs=None):
        if self.scorer is not None:
            self.scorer.set_weights(unsharded_weights(self.model))
        result = score_split(self.predict, self.split, self.kinds, self.tasks, self.user_column)
        self.reports[epoch + 1] = result
        scores = validation_logs(result, self.select_by)
        if logs is not None:
            logs.update(scores)
        if self.epochs_file is not None:
            with self.epochs_file.open("a") as file:
                file.write(json.dumps({"epoch": epoch + 1, **scores}) + "\n")
        for task, report in result["tasks"].items():
            log.info(
                "epoch %d validation %s: auc %.4f gauc %.4f logloss %.4f",
                epoch + 1,
                task,
                report["auc"],
                report["gauc"],
                report["logloss"],
            )


def validation_logs(result: dict, select_by: str) -> dict[str, float]:
    """An epoch's validation metrics as flat ``val_`` keys (Keras logs, TensorBoard, epochs.jsonl)."""
    per_task = result["tasks"]
    scores = {f"val_{key}": result[key] for key in METRICS}
    if len(per_task) > 1:
        scores.update({f"val_{key}_{task}": report[key] for task, report in per_task.items() for key in METRICS})
    if select_by == "mean":
        scores["val_score"] = float(np.mean([report["auc"] for report in per_task.values()]))
    else:
        scores["val_score"] = per_task[select_by]["auc"]
    return scores


METRICS = ("auc", "gauc", "logloss")


class ThroughputMeter(tf.keras.callbacks.Callback):
    """Steady-state training examples/sec: from the end of each epoch's first call of the train
    function (tracing, warm-up excluded) to the end of the epoch, when Keras has waited for every
    step (under a parameter server steps only get scheduled before that). Listed before the
    validation, so the per-epoch validation is not counted."""

    def __init__(self, batch_size: int):
        super().__init__()
        skip_log_sync(self)  # never reads logs: Keras need not wait for each step's values
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


def training_callbacks(
    work: Path,
    *,
    patience: int,
    backup_every: int | str | None,
    cursor: EpochCursor,
    steps_per_epoch: int,
    steps_per_call: int,
    meter: ThroughputMeter,
    validation: ValidationScore | None,
    per_step_logs: bool,
) -> list[tf.keras.callbacks.Callback]:
    """The run's callbacks in the order they must run (see the module docstring).

    ``backup_every``: crash backups every that many steps, ``"epoch"``, or ``None`` for none (a
    parameter-server run restarts from its first epoch). ``steps_per_call``: training steps per
    call of the train function (``train.steps_per_execution``); the batch hooks run at the end of
    each call. ``per_step_logs``: step logs are local values, so NaN is caught at the end of the
    call that met it and TensorBoard is written about every 100 steps; otherwise
    (parameter-server step logs are remote values) NaN is caught per epoch, after ``fit``.
    ``validation``: ``None`` when nothing is held out; every epoch's weights are then saved as the
    best, so the last one is exported, and nothing stops early.
    """
    backup = (
        None
        if backup_every is None
        else RunBackup(work / BACKUP, backup_every, cursor, steps_per_epoch, steps_per_call)
    )

    def finished_scores() -> list[float]:
        """val_score of the epochs a resumed run does not train again (an epoch scored but not backed
        up before a crash is trained and scored anew)."""
        finished = backup.finished_epochs if backup else 0
        return [e["val_score"] for e in epoch_scores(work) if e["epoch"] <= finished]

    if validation is None:
        selection = [tf.keras.callbacks.ModelCheckpoint(str(work / BEST_WEIGHTS), save_weights_only=True)]
    else:  # the validation first: the checkpoint and early stopping read the val_score it adds
        selection = [
            validation,
            BestCheckpoint(work / BEST_WEIGHTS, finished_scores),
            ResumableEarlyStopping(patience, finished_scores),
        ]
    return [
        *([backup] if backup else []),  # first: restores the backup before the others start
        meter,  # its epoch ends before the validation's
        *selection,
        *([EpochBackup(backup)] if backup else []),  # marks the epoch finished: after it is scored and saved
        *([tf.keras.callbacks.TerminateOnNaN()] if per_step_logs else []),
        tf.keras.callbacks.TensorBoard(
            str(work / "logs"), update_freq=100 if per_step_logs else "epoch", profile_batch=0
        ),
    ]
