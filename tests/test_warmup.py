"""TF Serving's warm-up file: real validation rows for both prediction signatures, each request
runs on the reloaded export and answers as the model does; a re-export without its data still
writes requests that run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from tensorflow_serving.apis.predict_pb2 import PredictRequest
from tensorflow_serving.apis.prediction_log_pb2 import PredictionLog

from ppnet.cli import main
from ppnet.data.schema import to_arrays
from ppnet.export import WARMUP_FILE, WARMUP_ROWS, export_model
from ppnet.rundir import load_run

EXPECTED = [("serving_default", 1), ("serve_examples", 1), ("serving_default", 8), ("serve_examples", 8)]


def read_warmup(export: Path) -> list[PredictRequest]:
    """The warm-up file's requests, read as TF Serving reads them."""
    records = tf.data.TFRecordDataset(str(export / "assets.extra" / WARMUP_FILE))
    return [PredictionLog.FromString(record.numpy()).predict_log.request for record in records]


def inputs_of(request: PredictRequest) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


def rows_of(request: PredictRequest) -> int:
    return len(next(iter(inputs_of(request).values())))


def kinds_of(run: Path) -> dict[str, str]:
    return json.loads((run / "stats.json").read_text())["kinds"]


def validation_head(run: Path, synthetic_dir: Path) -> dict[str, np.ndarray]:
    """The validation split's first rows (the last date is the last file), read without ``Split``."""
    table = pq.read_table(sorted(synthetic_dir.glob("*.parquet"))[-1]).slice(0, WARMUP_ROWS)
    return to_arrays(table.to_batches()[0], kinds_of(run))


@pytest.fixture(scope="module")
def first_rows(trained_run, synthetic_dir) -> dict[str, np.ndarray]:
    return validation_head(trained_run, synthetic_dir)


def assert_same_rows(sent: dict[str, np.ndarray], rows: dict[str, np.ndarray]) -> None:
    assert sent.keys() == rows.keys()
    for name, values in rows.items():
        expected = np.array([v.encode() for v in values], dtype=object) if values.dtype == object else values
        np.testing.assert_array_equal(sent[name], expected, err_msg=name)


def test_warmup_file_sends_the_first_validation_rows_to_both_signatures(trained_run, first_rows):
    requests = read_warmup(trained_run / "export" / "1")
    assert [(r.model_spec.signature_name, rows_of(r)) for r in requests] == EXPECTED
    assert_same_rows(inputs_of(requests[2]), first_rows)
    assert_same_rows(inputs_of(requests[0]), {name: values[:1] for name, values in first_rows.items()})


@pytest.mark.parametrize("run_fixture", ["trained_run", "multitask_run"])
def test_every_warmup_request_runs_on_the_reloaded_export_as_on_the_model(run_fixture, request, synthetic_dir):
    run = request.getfixturevalue(run_fixture)
    rows = validation_head(run, synthetic_dir)
    model = load_run(run)
    logits = model.forward({k: tf.constant(v) for k, v in rows.items()}).logits
    expected = {f"probability_{task}": tf.sigmoid(x).numpy() for task, x in logits.items()} if len(logits) > 1 else {}
    expected["probability"] = tf.sigmoid(logits[model.task_names[0]]).numpy()
    loaded = tf.saved_model.load(str(run / "export" / "1"))
    for sent in read_warmup(run / "export" / "1"):
        signature = loaded.signatures[sent.model_spec.signature_name]
        inputs = inputs_of(sent)
        assert inputs.keys() == signature.structured_input_signature[1].keys()  # TF Serving wants all, no more
        outputs = signature(**{name: tf.constant(values) for name, values in inputs.items()})
        assert outputs.keys() == expected.keys()
        for name, values in outputs.items():
            assert values.shape == (rows_of(sent),)
            np.testing.assert_allclose(values.numpy(), expected[name][: rows_of(sent)], rtol=1e-5, atol=1e-6)


def test_reexport_warms_up_with_the_runs_validation_rows(trained_run, first_rows, tmp_path):
    assert main(["export", "--run", str(trained_run), "--out", str(tmp_path)]) == 0
    requests = read_warmup(tmp_path / "1")
    assert [(r.model_spec.signature_name, rows_of(r)) for r in requests] == EXPECTED
    assert_same_rows(inputs_of(requests[2]), first_rows)
    warmup = Path("assets.extra", WARMUP_FILE)
    assert (tmp_path / "1" / warmup).read_bytes() == (trained_run / "export" / "1" / warmup).read_bytes()


def move_the_data(metrics: dict, tmp_path: Path) -> tuple[str, str]:
    metrics["splits"]["valid"]["files"] = [str(tmp_path / "moved.parquet")]
    return "WARNING", f"{tmp_path / 'moved.parquet'}: cannot read"


def forget_the_splits(metrics: dict, tmp_path: Path) -> tuple[str, str]:
    del metrics["splits"]  # a run from before ppnet recorded them
    return "INFO", "no validation split recorded"


@pytest.mark.parametrize("damage", [move_the_data, forget_the_splits])
def test_reexport_without_its_rows_warms_up_with_default_values_that_run(trained_run, tmp_path, caplog, damage):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export"))
    metrics = json.loads((run / "metrics.json").read_text())
    level, reason = damage(metrics, tmp_path)
    (run / "metrics.json").write_text(json.dumps(metrics))

    assert main(["export", "--run", str(run), "--out", str(tmp_path / "base")]) == 0
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "warm-up requests carry default" in r.getMessage()]
    assert len(said) == 1 and said[0][0] == level and reason in said[0][1]
    requests = read_warmup(tmp_path / "base" / "1")
    assert [(r.model_spec.signature_name, rows_of(r)) for r in requests] == EXPECTED
    defaults = {"int64": -1, "string": b"", "float32": 0.0}
    assert all(np.all(v == defaults[kinds_of(run)[k]]) for k, v in inputs_of(requests[2]).items())
    loaded = tf.saved_model.load(str(tmp_path / "base" / "1"))
    for sent in requests:
        inputs = {name: tf.constant(values) for name, values in inputs_of(sent).items()}
        probability = loaded.signatures[sent.model_spec.signature_name](**inputs)["probability"].numpy()
        assert probability.shape == (rows_of(sent),) and np.all((probability > 0) & (probability < 1))


def test_a_failed_warmup_write_leaves_no_version(trained_run, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.io, "TFRecordWriter", crash)
    with pytest.raises(OSError, match="disk full"):
        export_model(load_run(trained_run), tmp_path)
    assert list(tmp_path.iterdir()) == []
