"""Score parquet data and report AUC, gAUC, logloss and calibration.

``ppnet evaluate`` runs the *exported* SavedModel, i.e. exactly what TF Serving runs, and needs
nothing from the training run but the export itself; during training the same streaming scores
the Keras model (``model_predictor``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf

from ppnet import metrics
from ppnet.config import Task, target_columns
from ppnet.data.pipeline import input_specs
from ppnet.data.schema import FLOAT, INT, check_user_column, column_kind, read_schema, resolve_files, to_arrays
from ppnet.data.split import Split, check_labels
from ppnet.errors import PPNetError

log = logging.getLogger(__name__)

Predictor = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # features → probabilities by task


def predict_split(
    predict: Predictor,
    split: Split,
    kinds: dict[str, str],
    tasks: list[Task],
    user_column: str | None,
    batch_rows: int = 8192,
    keep_columns: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """Stream ``split`` through ``predict``: (label and mask columns as float64 and
    ``keep_columns`` as they are, by name; probabilities by task; user ids or None)."""
    targets = target_columns(tasks)
    kept = [name for name in keep_columns if name not in targets]
    columns = list(dict.fromkeys([*kinds, *targets, *kept, *([user_column] if user_column else [])]))
    values: dict[str, list] = {name: [] for name in [*targets, *kept]}
    scores: dict[str, list] = {task.name: [] for task in tasks}
    users = []
    for _file, batch in split.batches(columns, batch_rows):
        for name in targets:
            values[name].append(batch.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False))
        for name in kept:
            values[name].append(batch.column(name).to_numpy(zero_copy_only=False))
        probabilities = predict(to_arrays(batch, kinds))
        for task in tasks:
            scores[task.name].append(np.asarray(probabilities[task.name]).reshape(-1))
        if user_column:
            users.append(user_ids(batch.column(user_column)))
    if not values[targets[0]]:
        raise PPNetError(f"{split.description}: no rows to evaluate")
    joined = {name: np.concatenate(parts) for name, parts in values.items()}
    return (
        joined,
        {name: np.concatenate(parts) for name, parts in scores.items()},
        np.concatenate(users) if users else None,
    )


def user_ids(column: pa.Array) -> np.ndarray:
    """A user column as gAUC groups it, null users as None (left out). Not arrow's ``to_numpy``:
    with a null it turns int64 ids into float64, which merges the ids above 2**53 (hashed ids)."""
    if column.null_count == 0 or not pa.types.is_integer(column.type):
        return column.to_numpy(zero_copy_only=False)
    ids = column.fill_null(0).to_numpy().astype(object)
    ids[column.is_null().to_numpy(zero_copy_only=False)] = None
    return ids


def score_split(
    predict: Predictor,
    split: Split,
    kinds: dict[str, str],
    tasks: list[Task],
    user_column: str | None,
    by: str | None = None,
) -> dict:
    """Metrics of ``predict`` on ``split`` (see ``metrics.report``), a masked task's on the rows its
    mask keeps: each task's under ``tasks``, and the first task's also at the top level (where
    single-task readers find them). ``by``: each task's metrics also by value of that column, under
    ``by[column][value]`` (a multi-domain model is judged domain by domain)."""
    targets, scores, users = predict_split(predict, split, kinds, tasks, user_column, keep_columns=(by,) if by else ())
    reports = {}
    for task in tasks:
        keep = targets[task.mask] == 1 if task.mask else np.ones(len(scores[task.name]), bool)
        source = f"{split.description} [{task.name}]" if len(tasks) > 1 else split.description
        labels, probabilities = targets[task.name][keep], scores[task.name][keep]
        task_users = users[keep] if users is not None else None
        reports[task.name] = metrics.report(labels, probabilities, task_users, source)
        if by:
            reports[task.name]["by"] = {by: slice_reports(labels, probabilities, task_users, targets[by][keep])}
    return {**reports[tasks[0].name], "tasks": reports}


def slice_reports(
    labels: np.ndarray, probabilities: np.ndarray, users: np.ndarray | None, values: np.ndarray
) -> dict[str, dict]:
    """``metrics.report`` of the rows of each value of ``values`` (nulls as ``"null"``), most rows
    first; a slice of one class has a NaN AUC and gAUC, not an error. The rows are grouped once,
    so a column of many values (``--by user_id``) costs one pass, not one per value."""
    names = pd.Series(values, dtype=object).fillna("null").astype(str)
    slices = names.groupby(names, sort=False).indices  # value → its row positions
    return {
        value: metrics.report(
            labels[rows], probabilities[rows], users[rows] if users is not None else None, value, one_class_ok=True
        )
        for value, rows in sorted(slices.items(), key=lambda item: -len(item[1]))
    }


def model_predictor(model: tf.keras.Model, kinds: dict[str, str]) -> Predictor:
    """numpy feature batch → probabilities by task, through one ``tf.function`` traced once for any batch size."""
    predict = tf.function(
        lambda features: {task: tf.sigmoid(logits) for task, logits in model.forward(features).logits.items()},
        input_signature=[input_specs(kinds)],
    )
    return lambda features: {task: values.numpy() for task, values in predict(features).items()}


def export_tasks(meta: dict) -> list[Task]:
    """The tasks an export was trained on (exports from before tasks record one ``label``)."""
    return [Task(**task) for task in meta["tasks"]] if "tasks" in meta else [Task(meta["label"])]


def is_export(directory: Path) -> bool:
    """A SavedModel version directory written by ppnet: the graph and ppnet's metadata."""
    return (directory / "saved_model.pb").is_file() and (directory / "assets.extra" / "ppnet.json").is_file()


def load_export(model_dir: str | Path):
    """(predictor, export metadata) of a SavedModel written by ``ppnet``; TensorFlow only."""
    model_dir = Path(model_dir)
    meta_path = model_dir / "assets.extra" / "ppnet.json"
    if not is_export(model_dir):
        raise PPNetError(
            f"{model_dir}: not a ppnet SavedModel export (expected saved_model.pb and "
            "assets.extra/ppnet.json; pass a version directory such as EXPORT_BASE/1)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise PPNetError(f"{meta_path}: cannot read the export's metadata ({err}); the export is damaged") from None
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    tasks = [task.name for task in export_tasks(meta)]
    outputs = {task: f"probability_{task}" for task in tasks} if len(tasks) > 1 else {tasks[0]: "probability"}

    def predict(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = serve(**{name: tf.constant(values) for name, values in features.items()})
        return {task: result[output].numpy() for task, output in outputs.items()}

    return predict, meta


def evaluate_export(
    model_dir: str | Path,
    data_path: str | Path,
    label: str | None = None,
    user_column: str | None = None,
    by: str | None = None,
) -> dict:
    """Metrics of an exported model on parquet data (file, directory or glob), per task.

    ``label`` replaces the label column of a single-task export; a multi-task export reads each
    task's own label (and mask) columns. ``by`` names a column to also score slice by slice (see
    ``score_split``).
    """
    predict, meta = load_export(model_dir)
    tasks = export_tasks(meta)
    if label and len(tasks) > 1:
        raise PPNetError(
            f"--label {label}: {model_dir} has tasks {[t.name for t in tasks]}, each scored on its own label"
        )
    if label:
        tasks = [Task(label)]
    user_column = user_column or meta["user_column"]
    split = Split(tuple(resolve_files(data_path)), None, str(data_path))
    check_scorable(split, meta["inputs"], tasks, user_column, by)
    result = score_split(predict, split, meta["inputs"], tasks, user_column, by)
    warning = training_rows_warning(meta, split, result["rows"])
    if warning:
        log.warning(warning)
    return result


def check_scorable(
    split: Split, inputs: dict[str, str], tasks: list[Task], user_column: str, by: str | None = None
) -> None:
    """Fail with one line naming the file and column, before any scoring, when an export reading
    ``inputs`` cannot score ``split``: a file lacks an input, label, mask, user or ``by`` column,
    holds one of another kind, or a task's labels are not 0/1 or all one class. Scoring would
    otherwise fail inside TensorFlow, or end in a NaN AUC, after streaming the data."""
    for file in split.files:
        schema = read_schema(file)
        missing = [c for c in [*inputs, *target_columns(tasks), user_column] if c not in schema.names]
        if missing:
            raise PPNetError(f"{file}: column(s) {missing} missing (the model expects them)")
        if by and by not in schema.names:
            raise PPNetError(f"{file}: column {by!r} missing (--by slices the metrics by it)")
        check_user_column(file, schema, user_column)
        for name, kind in inputs.items():
            found = column_kind(schema.field(name).type)
            if found != kind and not (kind == FLOAT and found == INT):
                raise PPNetError(
                    f"{file}: column {name!r} has type {schema.field(name).type}; the model expects {kind}"
                )
    check_labels(split, tasks, need_both_classes=True)


def training_rows_warning(meta: dict, split: Split, rows: int) -> str | None:
    """Why metrics of the export on ``split`` (``rows`` scored) would flatter it, or None: some of
    its rows are rows it trained on."""
    splits = meta.get("splits")
    if not splits:  # exports from before the run recorded its rows
        return None
    trained_on = [splits["train"], *([splits["refit"]] if "refit" in splits else [])]
    trained = sum(Split.from_json(record).overlap(split) for record in trained_on)
    if not trained:
        return None
    if "refit" in splits:
        advice = "score days after them (train.refit trained it on its validation rows too)"
    elif "valid" in splits:
        advice = f"score its validation rows, {splits['valid']['description']}"
    else:
        advice = "score days after them (its run held no rows out)"
    where = " and ".join(record["description"] for record in trained_on)
    return (
        f"{trained} of the {rows} rows scored are from the model's training rows, {where}: their metrics flatter it; "
        + advice
    )
