"""The run's callbacks come in the one order that makes resume, scoring and checkpoints agree."""

import pytest
import tensorflow as tf

from ppnet.callbacks import (
    BestCheckpoint,
    EpochBackup,
    ResumableEarlyStopping,
    RunBackup,
    ThroughputMeter,
    ValidationScore,
    training_callbacks,
)
from ppnet.config import Task
from ppnet.data.pipeline import EpochCursor


def callback_types(tmp_path, backup_every, per_step_logs: bool) -> list[type]:
    validation = ValidationScore(split=None, kinds={}, tasks=[Task("label")], user_column="user", epochs_file=None)
    callbacks = training_callbacks(
        tmp_path,
        patience=2,
        backup_every=backup_every,
        cursor=EpochCursor(),
        steps_per_epoch=10,
        steps_per_call=4,
        meter=ThroughputMeter(256),
        validation=validation,
        per_step_logs=per_step_logs,
    )
    return [type(callback) for callback in callbacks]


@pytest.mark.parametrize("backup_every", [5, "epoch"])
def test_backup_first_and_epoch_backup_after_scoring_and_checkpoint(tmp_path, backup_every):
    assert callback_types(tmp_path, backup_every, per_step_logs=True) == [
        RunBackup,
        ThroughputMeter,
        ValidationScore,
        BestCheckpoint,
        ResumableEarlyStopping,
        EpochBackup,
        tf.keras.callbacks.TerminateOnNaN,
        tf.keras.callbacks.TensorBoard,
    ]


def test_parameter_server_runs_have_no_backups_and_no_per_step_nan_guard(tmp_path):
    assert callback_types(tmp_path, None, per_step_logs=False) == [
        ThroughputMeter,
        ValidationScore,
        BestCheckpoint,
        ResumableEarlyStopping,
        tf.keras.callbacks.TensorBoard,
    ]
