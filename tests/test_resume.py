"""Crash and resume: a training process killed mid-epoch or mid-validation resumes from its last backup."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ppnet import distribute
from ppnet.callbacks import ResumableEarlyStopping
from ppnet.data.schema import fingerprint
from ppnet.errors import PPNetError
from ppnet.rundir import EPOCHS_FILE, changed_keys, epoch_scores, prepare_run_dir
from ppnet.synthetic import write_synthetic
from tests.helpers import DEFAULT_CONFIG, small_config

STEPS_PER_CALL = 8
BACKUP_EVERY = 20  # steps: rounded up to whole calls of the train function, a backup every 24
SETTINGS = [
    f"train.steps_per_execution={STEPS_PER_CALL}",
    "model.hidden_units=[32, 16]",
    "model.gate_hidden=8",
    "train.batch_size=128",
    "train.epochs=2",
    f"train.backup_every_steps={BACKUP_EVERY}",
    "data.shuffle_buffer=8192",
]


def train_command(data, out, *extra):
    sets = [arg for item in SETTINGS for arg in ("--set", item)]
    return [
        sys.executable,
        "-m",
        "ppnet.cli",
        "train",
        "--config",
        str(DEFAULT_CONFIG),
        "--data",
        str(data),
        "--out",
        str(out),
        *sets,
        *extra,
    ]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "log"
    write_synthetic(out, rows=30_000, seed=3)
    return out


def test_killed_run_resumes_mid_epoch_and_finishes_like_an_uninterrupted_one(log_dir, tmp_path):
    run = tmp_path / "run"
    backup = tmp_path / "run.partial" / "backup"
    first = subprocess.Popen(train_command(log_dir, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not backup.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # a few more steps past the first backup
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL, "training finished before it could be killed"
    assert not run.exists() and backup.exists()

    resumed = subprocess.run(train_command(log_dir, run), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    match = re.search(r"resuming at epoch (\d+), step (\d+)", resumed.stderr)
    assert match, "the second run restarted instead of resuming"
    epoch, step = map(int, match.groups())
    backed_up_every = -(-BACKUP_EVERY // STEPS_PER_CALL) * STEPS_PER_CALL
    assert epoch >= 1 and (step > 0 or epoch > 1) and step % backed_up_every == 0
    resumed_metrics = json.loads((run / "metrics.json").read_text())
    assert resumed_metrics["epochs_run"] == 2  # counted across the killed and the resumed process
    assert (run / "export" / "1" / "saved_model.pb").is_file()
    assert not (tmp_path / "run.partial").exists()

    clean = subprocess.run(train_command(log_dir, tmp_path / "clean"), capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    clean_metrics = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert resumed_metrics["rows"] == clean_metrics["rows"]
    assert resumed_metrics["auc"] == pytest.approx(clean_metrics["auc"], abs=0.01)


def test_resume_with_a_different_config_is_refused_and_fresh_starts_over(log_dir, tmp_path):
    partial = tmp_path / "run.partial"
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps({"features": []}))
    refused = subprocess.run(train_command(log_dir, tmp_path / "run"), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "run.json is missing" in refused.stderr and "--fresh" in refused.stderr
    assert "Traceback" not in refused.stderr
    fresh = subprocess.run(
        train_command(log_dir, tmp_path / "run", "--fresh", "--set", "train.epochs=1"),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "resuming" not in fresh.stderr and (tmp_path / "run" / "metrics.json").exists()


# Runs `ppnet` with one function replaced by a crash (exit 9), as a kill or power cut there would.
# The first argument names it from ppnet's modules: "module.function" or "module.Class.method".
CRASH_AT = """
import functools, importlib, os, sys
from ppnet import cli
module, *owners, name = sys.argv.pop(1).split(".")
owner = functools.reduce(getattr, owners, importlib.import_module("ppnet." + module))
setattr(owner, name, lambda *args, **kwargs: os._exit(9))
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "crash_at",
    ["callbacks.ValidationScore.on_epoch_end", "callbacks.BestCheckpoint.on_epoch_end"],
    ids=["before scoring", "after scoring, before the checkpoint"],
)
def test_crash_around_an_epochs_validation_resumes_and_scores_it(log_dir, tmp_path, crash_at):
    """Keras backs up an epoch's last batch as "resume at the next epoch"; a crash during the
    validation after it used to leave the epoch unscored and a one-epoch run unable to finish, and
    a crash between scoring and checkpointing left no best checkpoint."""
    run = tmp_path / "run"
    command = train_command(log_dir, run, "--set", "train.epochs=1", "--set", "train.backup_every_steps=1")
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AT, crash_at, *command[3:]], capture_output=True, text=True, timeout=600
    )
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    assert (tmp_path / "run.partial" / "backup").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1


def test_crash_after_training_only_exports_on_rerun(log_dir, tmp_path):
    """Training that ended (by early stopping or its last epoch) is not resumed for more epochs."""
    run = tmp_path / "run"
    command = train_command(log_dir, run, "--set", "train.epochs=1")
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AT, "train.export_model", *command[3:]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "training had finished" in rerun.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["examples_per_sec"] is None
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.json", "run.json", "stats.json", "epochs.jsonl", "checkpoints", "logs", "export", "metrics.json"]
    )


def test_early_stopping_counts_the_epochs_before_a_resume():
    stopping = ResumableEarlyStopping(patience=2, finished_scores=lambda: [0.70, 0.72, 0.71])
    stopping.on_train_begin()
    assert stopping.best == 0.72 and stopping.wait == 1


def test_an_epoch_scored_twice_counts_once_with_its_last_score(tmp_path):
    lines = [
        {"epoch": 1, "val_auc": 0.6, "val_score": 0.5},
        {"epoch": 2, "val_auc": 0.61, "val_score": 0.51},
        {"epoch": 2, "val_auc": 0.62, "val_score": 0.52},
    ]
    (tmp_path / EPOCHS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert epoch_scores(tmp_path) == [lines[0], lines[2]]


def test_epochs_from_before_select_by_are_scored_by_their_auc(tmp_path):
    (tmp_path / EPOCHS_FILE).write_text(json.dumps({"epoch": 1, "val_auc": 0.6}) + "\n")
    assert epoch_scores(tmp_path) == [{"epoch": 1, "val_auc": 0.6, "val_score": 0.6}]


# --- what a resume must share with the interrupted run ------------------------------------------


def _identity_inputs(files):
    return {"data": "log", "valid": None, "files": fingerprint(files)}


def test_a_resume_on_changed_data_is_refused_saying_what_changed(synthetic_dir, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    shutil.copytree(synthetic_dir, tmp_path / "log")
    files = sorted((tmp_path / "log").glob("*.parquet"))
    config = small_config()
    work = prepare_run_dir(tmp_path / "run", config, _identity_inputs(files), fresh=False)
    assert prepare_run_dir(tmp_path / "run", config, _identity_inputs(files), fresh=False) == work
    rows = pq.read_metadata(files[3]).num_rows
    pq.write_table(pq.read_table(files[3]).slice(1), files[3])  # one row fewer
    with pytest.raises(PPNetError) as refused:
        prepare_run_dir(tmp_path / "run", config, _identity_inputs(files), fresh=False)
    assert f"{files[3]} changed since (rows: {rows} then, {rows - 1} now; bytes: " in str(refused.value)
    assert "--fresh" in str(refused.value)
    extra = tmp_path / "log" / "part-20220609.parquet"
    shutil.copyfile(files[0], extra)
    with pytest.raises(PPNetError, match=f"the data has a new file {extra}"):
        prepare_run_dir(tmp_path / "run", config, _identity_inputs([*files, extra]), fresh=False)
    with pytest.raises(PPNetError, match=r"config differs in model\.hidden_units, train\.epochs"):
        prepare_run_dir(
            tmp_path / "run",
            small_config("model.hidden_units=[8]", "train.epochs=5"),
            _identity_inputs(files),
            fresh=False,
        )
    fresh = prepare_run_dir(tmp_path / "run", config, _identity_inputs([*files, extra]), fresh=True)
    assert json.loads((fresh / "run.json").read_text())["inputs"]["files"][-1]["path"] == str(extra)


def test_changed_keys_names_every_difference():
    old = {"model": {"name": "ppnet", "units": [1, 2]}, "features": [{"dim": 4}, {"dim": 8}]}
    new = {"model": {"name": "dnn", "units": [1, 3]}, "features": [{"dim": 4}, {"dim": 16}], "tasks": []}
    assert changed_keys(old, new) == ["features[1].dim", "model.name", "model.units[1]", "tasks"]
    assert changed_keys(old, old) == []


def test_a_worker_waits_for_this_runs_statistics_not_an_earlier_runs(tmp_path):
    import threading

    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"run": "earlier"}))
    later = threading.Timer(0.5, lambda: stats.write_text(json.dumps({"run": "this"})))
    later.start()
    ready = distribute.wait_for_file(stats, lambda p: json.loads(p.read_text())["run"] == "this", timeout=30)
    assert json.loads(ready.read_text())["run"] == "this"
    with pytest.raises(PPNetError, match="did not write it for this run"):
        distribute.wait_for_file(stats, lambda p: False, timeout=0.3)
