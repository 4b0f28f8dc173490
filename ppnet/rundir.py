"""The run directory: what a training run writes, how a rerun recognises and resumes it, and how
a finished run's model is loaded back.

Everything is written into ``RUN_DIR.partial/`` and renamed to ``RUN_DIR`` only when the run
has finished, so a directory named ``RUN_DIR`` is always a complete run. Rerunning the same
command after a crash resumes from the last backup in ``RUN_DIR.partial/backup``; once training
has ended, ``RUN_DIR.partial/fitted`` makes a rerun only score and export.

Layout::

    config.json   the resolved config (overrides applied)
    run.json      config and data paths: a rerun resumes only the same run
    stats.json    vocabularies, numeric mean/std, input kinds
    epochs.jsonl  exact validation metrics of every epoch (across resumes)
    checkpoints/  best epoch's weights (by validation AUC)
    logs/         TensorBoard
    export/<v>/   the SavedModel (TF Serving layout)
    metrics.json  validation auc/gauc/logloss/rows, training examples_per_sec, ...

While partial: ``backup/`` (crash backups), ``shards/`` (parameter-server workers' TFRecord
input) and ``fitted`` (training ended).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import tensorflow as tf

import ppnet
from ppnet.config import Config, config_from_dict, save_config
from ppnet.errors import PPNetError
from ppnet.files import replace_directory, write_text_atomic
from ppnet.model import RankingModel, build_model
from ppnet.stats import Stats

log = logging.getLogger(__name__)

BEST_WEIGHTS = "checkpoints/best"
EPOCHS_FILE = "epochs.jsonl"
FITTED = "fitted"
BACKUP = "backup"
SHARDS = "shards"


def partial_dir(out: Path) -> Path:
    """Where the run to be named ``out`` is written until it is complete."""
    return out.with_name(out.name + ".partial")


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse to start a run whose ``out`` exists, unless ``overwrite`` and it is a ppnet run."""
    if not out.exists():
        return
    if not overwrite:
        raise PPNetError(f"{out}: run directory already exists; pass --overwrite to replace it")
    if not (out / "config.json").exists():
        raise PPNetError(f"{out}: not a ppnet run directory (no config.json); --overwrite only replaces runs")


def prepare_run_dir(out: Path, config: Config, inputs: dict, fresh: bool) -> Path:
    """The working directory ``out.partial``: resumed if it holds the same config, data and ppnet
    version, else new."""
    work = partial_dir(out)
    identity = json.dumps({"config": config.to_dict(), "inputs": inputs, "ppnet": ppnet.__version__}, sort_keys=True)
    saved = work / "run.json"
    if work.exists() and not fresh:
        if saved.exists() and saved.read_text() == identity:
            log.info("resuming the interrupted run in %s", work)
            return work
        raise PPNetError(
            f"{work}: an interrupted run with a different config, data or ppnet version is "
            "there; rerun the same command to resume, or pass --fresh to start over"
        )
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_config(config, work / "config.json")
    write_text_atomic(saved, identity)
    return work


def epoch_scores(work: Path) -> list[dict]:
    """Every finished epoch's validation scores, across resumes; ``val_score`` is what selects the
    best epoch (``val_auc`` in runs from before ``train.select_by``)."""
    path = work / EPOCHS_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    lines = [{"val_score": line["val_auc"], **line} for line in lines]
    return list({line["epoch"]: line for line in lines}.values())  # an epoch rerun after a crash: its last score


def finish_run(work: Path, out: Path, metrics: dict) -> None:
    """Write ``metrics.json``, drop the scratch files and rename the complete run to ``out``."""
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for scratch in (BACKUP, SHARDS):  # last: a crash before here still resumes
        shutil.rmtree(work / scratch, ignore_errors=True)
    (work / FITTED).unlink()  # the chief marks training ended before it scores and exports
    replace_directory(work, out)


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
        raise PPNetError(
            f"{run_dir}: its checkpoint does not hold this model's weights (written by another "
            f"ppnet version? this is {ppnet.__version__}); export with the version that trained "
            "it, or retrain"
        ) from None
