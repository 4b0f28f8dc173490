"""Score parquet data and report AUC, gAUC, logloss and calibration.

``ppnet evaluate`` runs the *exported* SavedModel, i.e. exactly what TF Serving runs, and needs
nothing from the training run but the export itself; during training the same streaming scores
the Keras model (``model_predictor``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import tensorflow as tf

from ppnet import metrics
from ppnet.data.pipeline import input_specs
from ppnet.data.schema import FLOAT, INT, check_user_column, column_kind, read_schema, resolve_files, to_arrays
from ppnet.data.split import Split, check_labels
from ppnet.errors import PPNetError

Predictor = Callable[[dict[str, np.ndarray]], np.ndarray]


def predict_split(
    predict: Predictor, split: Split, kinds: dict[str, str], label: str, user_column: str | None, batch_rows: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Stream ``split`` through ``predict``: (labels, probabilities, user ids or None)."""
    columns = list(dict.fromkeys([*kinds, label, *([user_column] if user_column else [])]))
    labels, scores, users = [], [], []
    for _file, batch in split.batches(columns, batch_rows):
        labels.append(batch.column(label).cast(pa.float64()).to_numpy(zero_copy_only=False))
        scores.append(np.asarray(predict(to_arrays(batch, kinds))).reshape(-1))
        if user_column:
            users.append(batch.column(user_column).to_numpy(zero_copy_only=False))
    if not labels:
        raise PPNetError(f"{split.description}: no rows to evaluate")
    return np.concatenate(labels), np.concatenate(scores), np.concatenate(users) if users else None


def score_split(predict: Predictor, split: Split, kinds: dict[str, str], label: str, user_column: str | None) -> dict:
    """Metrics of ``predict`` on ``split`` (see ``metrics.report``)."""
    labels, scores, users = predict_split(predict, split, kinds, label, user_column)
    return metrics.report(labels, scores, users, split.description)


def model_predictor(model: tf.keras.Model, kinds: dict[str, str]) -> Predictor:
    """numpy feature batch → probabilities, through one ``tf.function`` traced once for any batch size."""
    predict = tf.function(
        lambda features: tf.sigmoid(model(features, training=False)), input_signature=[input_specs(kinds)]
    )
    return lambda features: predict(features).numpy()


def load_export(model_dir: str | Path):
    """(predictor, export metadata) of a SavedModel written by ``ppnet``; TensorFlow only."""
    model_dir = Path(model_dir)
    meta_path = model_dir / "assets.extra" / "ppnet.json"
    if not (model_dir / "saved_model.pb").exists() or not meta_path.exists():
        raise PPNetError(
            f"{model_dir}: not a ppnet SavedModel export (expected saved_model.pb and "
            "assets.extra/ppnet.json; pass a version directory such as EXPORT_BASE/1)"
        )
    meta = json.loads(meta_path.read_text())
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    def predict(features: dict[str, np.ndarray]) -> np.ndarray:
        return serve(**{name: tf.constant(values) for name, values in features.items()})["probability"].numpy()

    return predict, meta


def evaluate_export(
    model_dir: str | Path, data_path: str | Path, label: str | None = None, user_column: str | None = None
) -> dict:
    """Metrics of an exported model on parquet data (file, directory or glob)."""
    predict, meta = load_export(model_dir)
    label = label or meta["label"]
    user_column = user_column or meta["user_column"]
    split = Split(tuple(resolve_files(data_path)), None, str(data_path))
    for file in split.files:
        schema = read_schema(file)
        missing = [c for c in [*meta["inputs"], label, user_column] if c not in schema.names]
        if missing:
            raise PPNetError(f"{file}: column(s) {missing} missing (the model expects them)")
        check_user_column(file, schema, user_column)
        for name, kind in meta["inputs"].items():
            found = column_kind(schema.field(name).type)
            if found != kind and not (kind == FLOAT and found == INT):
                raise PPNetError(
                    f"{file}: column {name!r} has type {schema.field(name).type}; the model expects {kind}"
                )
    check_labels(split, label, need_both_classes=True)
    return score_split(predict, split, meta["inputs"], label, user_column)
