"""End to end: train → run directory → metrics.json → exported model scores like the trained one."""

import json

import pytest
import tensorflow as tf

from ppnet.cli import main
from ppnet.distribute import Role
from ppnet.evaluate import evaluate_export
from ppnet.train import Duties, steps_per_call, train
from tests.helpers import DEFAULT_CONFIG, SMALL_OVERRIDES, small_config


def test_run_directory_contents(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "stats.json", "checkpoints", "logs", "export", "metrics.json"} <= names
    assert not trained_run.with_name(trained_run.name + ".partial").exists()
    assert list((trained_run / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event files"


def test_metrics_json(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.5 < metrics["auc"] <= 1.0 and 0.5 < metrics["gauc"] <= 1.0
    assert 0.0 < metrics["logloss"] < 1.0
    assert metrics["rows"] > 0 and metrics["examples_per_sec"] > 0
    assert metrics["export"] == "export/1" and 1 <= metrics["best_epoch"] <= metrics["epochs_run"]


def test_exported_model_reproduces_validation_metrics(trained_run, synthetic_dir):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    last_day = sorted(synthetic_dir.glob("*.parquet"))[-1]
    evaluated = evaluate_export(trained_run / "export" / "1", last_day)
    assert evaluated["rows"] == metrics["rows"]
    for key in ("auc", "gauc", "logloss"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-4)


def test_cli_trains_the_dnn_baseline_and_reexports(synthetic_dir, tmp_path, capsys):
    run = tmp_path / "dnn"
    sets = [arg for item in [*SMALL_OVERRIDES, "model.name=dnn", "train.epochs=1"] for arg in ("--set", item)]
    code = main(["train", "--config", str(DEFAULT_CONFIG), "--data", str(synthetic_dir), "--out", str(run), *sets])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()  # Keras' epoch lines, then the JSON result
    printed = json.loads("\n".join(lines[len(lines) - lines[::-1].index("{") - 1 :]))
    assert printed["model"] == "dnn" and printed["epochs_run"] == 1
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "serving")]) == 0
    assert (tmp_path / "serving" / "1" / "saved_model.pb").is_file()
    meta = json.loads((tmp_path / "serving" / "1" / "assets.extra" / "ppnet.json").read_text())
    assert meta["model"] == "dnn"
    recorded = json.loads((run / "metrics.json").read_text())["splits"]
    assert meta["splits"] == recorded, "a re-export records the run's training and validation rows"
    assert "splits" not in printed, "the file lists stay in metrics.json, out of the printed summary"


def test_evaluate_warns_about_the_models_training_rows(trained_run, synthetic_dir, caplog):
    files = sorted(synthetic_dir.glob("*.parquet"))
    meta = json.loads((trained_run / "export" / "1" / "assets.extra" / "ppnet.json").read_text())
    assert meta["splits"]["valid"]["where"] == {"column": "date", "op": ">=", "value": 20220608, "type": None}
    with caplog.at_level("WARNING", logger="ppnet.evaluate"):
        evaluate_export(trained_run / "export" / "1", files[-1])  # the validation day
        assert caplog.records == []
        whole = evaluate_export(trained_run / "export" / "1", synthetic_dir)
    [warning] = caplog.records
    valid_rows = json.loads((trained_run / "metrics.json").read_text())["rows"]
    assert f"{whole['rows'] - valid_rows} of the {whole['rows']} rows" in warning.getMessage()
    assert meta["splits"]["valid"]["description"] in warning.getMessage()


def test_hashed_ids_with_a_million_buckets_train_with_lazy_adam(synthetic_dir, tmp_path):
    config = small_config(
        "features.user_id.kind=hash", "features.user_id.bins=1048576", "train.optimizer=lazy_adam", "train.epochs=1"
    )
    metrics = train(config, str(synthetic_dir), tmp_path / "run")
    assert metrics["auc"] > 0.5
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert "user_id" not in stats["vocabularies"]  # hashing needs no vocabulary pass


@pytest.mark.parametrize(
    "role, backup_every_steps, expected",
    [
        (Role(), 0, (True, "local", "epoch", True, 1)),
        (Role(), 500, (True, "local", 500, True, 1)),
        (Role("worker", 0, 2), 500, (True, "sharded", "epoch", True, 2)),
        (Role("worker", 1, 2, is_chief=False), 500, (False, "sharded", "epoch", True, 2)),
        (Role("chief", 0, 3, parameter_server=True), 500, (True, "tfrecord", None, False, 3)),
    ],
    ids=["local", "local, step backups", "multi-worker chief", "multi-worker worker", "parameter-server chief"],
)
def test_duties_follow_the_cluster_role(role, backup_every_steps, expected):
    duties = Duties.of(role, small_config(f"train.backup_every_steps={backup_every_steps}"))
    assert (duties.owns_run, duties.input, duties.backup_every, duties.per_step_logs, duties.workers) == expected


def test_metrics_record_gate_settings_only_for_gated_models(trained_run):
    from ppnet.train import gate_settings

    assert json.loads((trained_run / "metrics.json").read_text())["gate_stop_gradient"] == "shared"
    assert gate_settings(small_config("model.name=dnn")) == {} == gate_settings(small_config("model.name=mmoe"))
    assert set(gate_settings(small_config("model.name=pepnet", 'model.domain_features=["tab"]'))) == {
        "gate_stop_gradient",
        "personal_ids_in_tower",
    }


def test_an_interrupted_training_says_where_the_partial_run_is_and_how_to_go_on(tmp_path, capsys, monkeypatch):
    from ppnet import cli

    def interrupted(args):
        (tmp_path / "run.partial").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_train", interrupted)
    argv = ["train", "--config", str(DEFAULT_CONFIG), "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ppnet: interrupted; the partial run is kept in {tmp_path / 'run.partial'}: "
        "rerun the same command to resume it, or add --fresh to start over"
    )


def test_a_run_that_holds_nothing_out_trains_on_every_row_and_exports_its_last_epoch(synthetic_dir, tmp_path, caplog):
    """``data.valid_last = 0``, a daily continuation's one pass: every row trains, no epoch is scored,
    the last is exported, and metrics.json and the export record no validation rows."""
    import numpy as np
    import pyarrow.parquet as pq
    import tensorflow as tf

    from ppnet.data.pipeline import iter_batches
    from ppnet.data.split import Split

    files = sorted(synthetic_dir.glob("*.parquet"))
    runs = {n: tmp_path / f"epochs{n}" for n in (1, 2)}
    two = [train(small_config("data.valid_last=0", f"train.epochs={n}"), str(synthetic_dir), runs[n]) for n in runs][-1]
    assert two["train_rows"] == sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    assert "auc" not in two and "valid" not in two["splits"] and two["epochs_run"] == two["best_epoch"] == 2
    assert not (runs[2] / "epochs.jsonl").exists()
    kinds = json.loads((runs[2] / "stats.json").read_text())["kinds"]
    features, _ = next(iter_batches(Split((files[-1],), None, "last day"), kinds, ["is_click"], 256))
    served = [
        tf.saved_model.load(str(run / "export" / "1"))
        .signatures["serving_default"](**{name: tf.constant(values) for name, values in features.items()})[
            "probability"
        ]
        .numpy()
        for run in runs.values()
    ]
    assert np.abs(served[1] - served[0]).max() > 1e-3, "the two-epoch run exports its second epoch, not its first"
    with caplog.at_level("WARNING", logger="ppnet.evaluate"):
        evaluate_export(runs[2] / "export" / "1", files[-1])
    assert "its run held no rows out" in caplog.text


def test_refit_without_validation_rows_is_refused_before_anything_is_written(synthetic_dir, tmp_path):
    from ppnet.errors import PPNetError

    with pytest.raises(PPNetError, match=r"train\.refit passes over the validation rows"):
        train(small_config("data.valid_last=0", "train.refit=true"), str(synthetic_dir), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_threads_asked_for_once_tensorflow_runs_are_said_and_recorded_not_applied(synthetic_dir, tmp_path, caplog):
    tf.constant(1.0) + 1.0  # TensorFlow has started in this process (an earlier test may have set its threads)
    current = tf.config.threading.get_intra_op_parallelism_threads()
    with caplog.at_level("WARNING", logger="ppnet.train"):
        config = small_config(f"train.intra_op_threads={current + 1}", "train.epochs=1")
        metrics = train(config, str(synthetic_dir), tmp_path / "run")
    expected = (
        f"train.intra_op_threads = {current + 1} not applied: TensorFlow already runs in this process with {current}"
    )
    assert expected in caplog.text
    assert metrics["intra_op_threads"] == current, "metrics.json records the threads the run had"


@pytest.mark.parametrize("steps_per_epoch, epochs, expected", [(40, 3, 8), (20, 5, 8), (20, 4, 1), (99, 1, 1)])
def test_only_runs_long_enough_to_pay_for_it_train_several_steps_per_call(steps_per_epoch, epochs, expected):
    config = small_config("train.steps_per_execution=8", f"train.epochs={epochs}")
    assert steps_per_call(config, steps_per_epoch) == expected
