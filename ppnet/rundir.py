"""The run directory: what a training run writes, how a rerun recognises and resumes it, and how
a finished run's model is loaded back.

Everything is written into ``RUN_DIR.partial/`` and renamed to ``RUN_DIR`` only when the run
has finished, so a directory named ``RUN_DIR`` is always a complete run. Rerunning the same
command after a crash resumes from the last backup in ``RUN_DIR.partial/backup``; once training
has ended, ``RUN_DIR.partial/fitted`` makes a rerun only score and export.

Layout::

    config.json   the resolved config (overrides applied)
    run.json      config, data paths and fingerprint, ppnet version: a rerun resumes only the same run
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

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import tensorflow as tf

import ppnet
from ppnet.config import Config, as_written_now, config_from_dict, save_config
from ppnet.errors import PPNetError
from ppnet.files import remove_leftovers, replace_directory, write_text_atomic
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


def run_identity(config: Config, inputs: dict) -> dict:
    """What a resumed run must share with the interrupted one: config, data (paths and
    ``fingerprint``) and ppnet version. Its hash names the run in ``stats.json`` (``run_id``)."""
    return {"config": config.to_dict(), "inputs": inputs, "ppnet": ppnet.__version__}


def run_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def prepare_run_dir(out: Path, config: Config, inputs: dict, fresh: bool) -> Path:
    """The working directory ``out.partial``: resumed if it holds the same config, data and ppnet
    version, else new (with ``fresh``) or refused, saying what changed."""
    work = partial_dir(out)
    remove_leftovers(out)  # a killed earlier run's half-replaced directory
    identity = run_identity(config, inputs)
    saved = work / "run.json"
    if work.exists() and not fresh:
        change = identity_change(_read_identity(saved), identity)
        if change is None:
            log.info("resuming the interrupted run in %s", work)
            drop_torn_line(work / EPOCHS_FILE)
            return work
        raise PPNetError(
            f"{work}: an interrupted run is there but {change}; rerun the same command on the same "
            "data to resume it, or pass --fresh to start over"
        )
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_config(config, work / "config.json")
    write_text_atomic(saved, json.dumps(identity, sort_keys=True))
    return work


def read_json(path: Path, what: str) -> dict:
    """A JSON file ppnet wrote, or a one-line error if it is unreadable or damaged."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PPNetError(f"{path}: cannot read {what} ({err}); the file is damaged") from None


def _read_identity(path: Path) -> dict:
    """A saved ``run.json``, or ``{}`` when it is missing or torn (then nothing matches)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def identity_change(saved: dict, current: dict) -> str | None:
    """How ``current`` differs from the interrupted run's ``saved`` identity, in words, or None."""
    if not saved:
        return "its run.json is missing or unreadable"
    if saved.get("ppnet") != current["ppnet"]:
        return f"it was written by ppnet {saved.get('ppnet')}, this is {current['ppnet']}"
    saved_config = as_written_now(saved.get("config", {}))
    if saved_config != current["config"]:
        keys = changed_keys(saved_config, current["config"])
        return f"its config differs in {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
    old, new = saved.get("inputs", {}), current["inputs"]
    for key in ("data", "valid"):
        if old.get(key) != new[key]:
            return f"it read --{key} {old.get(key)}, this run reads {new[key]}"
    before = {f["path"]: f for f in old.get("files", [])}
    after = {f["path"]: f for f in new["files"]}
    for path in after.keys() - before.keys():
        return f"the data has a new file {path}"
    for path in before.keys() - after.keys():
        return f"the data no longer has {path}"
    for path, file in after.items():
        changes = [
            f"{k}: {before[path][k]} then, {file[k]} now"
            for k in ("rows", "bytes", "mtime_ns")
            if before[path][k] != file[k]
        ]
        if changes:
            return f"{path} changed since ({'; '.join(changes)})"
    return None


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two JSON-like values differ (``features[3].dim``, ``model.name``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            key
            for name in sorted(old.keys() | new.keys())
            for key in changed_keys(old.get(name), new.get(name), f"{prefix}.{name}" if prefix else name)
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [key for i, (a, b) in enumerate(zip(old, new)) for key in changed_keys(a, b, f"{prefix}[{i}]")]
    return [] if old == new else [prefix or "(all)"]


def drop_torn_line(path: Path) -> None:
    """Cut an append-only log back to its last whole line (a crash while appending leaves a line
    without its newline, which the next append would run into)."""
    if path.exists():
        text = path.read_text()
        if text and not text.endswith("\n"):
            log.warning("%s: dropping its torn last line", path)
            write_text_atomic(path, text[: text.rfind("\n") + 1])


def epoch_scores(work: Path) -> list[dict]:
    """Every finished epoch's validation scores, across resumes; ``val_score`` is what selects the
    best epoch (``val_auc`` in runs from before ``train.select_by``)."""
    path = work / EPOCHS_FILE
    lines = []
    text = path.read_text().splitlines() if path.exists() else []
    for number, line in enumerate(text, 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            if number == len(text):  # torn by a crash while appending: that epoch is scored again
                log.warning("%s: dropping its torn last line", path)
                break
            raise PPNetError(f"{path}: line {number} is not JSON; the run directory is damaged") from None
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
    config = config_from_dict(read_json(config_path, "the run's config"), source=str(config_path))
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
