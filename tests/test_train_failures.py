"""Training that goes wrong stops with a clear error and keeps what is needed to recover."""

import pytest

from ppnet.errors import PPNetError
from ppnet.train import train
from tests.helpers import small_config


def test_nan_loss_stops_with_step_and_hint_and_keeps_the_backup(synthetic_dir, tmp_path):
    config = small_config("train.learning_rate=1e30", "train.optimizer=sgd", "train.backup_every_steps=1")
    with pytest.raises(PPNetError, match=r"training loss became (nan|inf).*step \d+.*learning_rate") as error:
        train(config, str(synthetic_dir), tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()
    assert any((tmp_path / "run.partial" / "backup").rglob("*")), "the last good backup was deleted"


def test_single_class_validation_day_is_refused_before_training(synthetic_dir, tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    log = tmp_path / "log"
    log.mkdir()
    files = sorted(synthetic_dir.glob("*.parquet"))
    for file in files[:-1]:
        (log / file.name).write_bytes(file.read_bytes())
    last = pq.read_table(files[-1])
    pq.write_table(last.filter(pc.equal(last["is_click"], 0)), log / files[-1].name)
    with pytest.raises(PPNetError, match=r"AUC is undefined"):
        train(small_config(), str(log), tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_missing_user_column_is_refused_before_training(synthetic_dir, tmp_path):
    with pytest.raises(PPNetError, match=r"column 'viewer' is missing"):
        train(small_config("data.user_column=viewer"), str(synthetic_dir), tmp_path / "run")
    assert not (tmp_path / "run.partial").exists()


def test_unsigned_64_bit_ids_are_refused(synthetic_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in sorted(synthetic_dir.glob("*.parquet")):
        table = pq.read_table(file)
        index = table.schema.get_field_index("video_id")
        pq.write_table(table.set_column(index, "video_id", table["video_id"].cast(pa.uint64())), tmp_path / file.name)
    with pytest.raises(PPNetError, match=r"'video_id' has type uint64"):
        train(small_config(), str(tmp_path), tmp_path / "run")


def test_export_refuses_a_checkpoint_that_lacks_weights_of_the_model(trained_run, tmp_path):
    """A checkpoint from another model layout must not restore in part and export random weights."""
    import json
    import shutil

    from ppnet.rundir import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["batch_norm"] = True  # layers the checkpoint has no weights for
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(PPNetError, match=r"checkpoint does not hold this model's weights"):
        load_run(run)
    assert load_run(trained_run).tower is not None  # the untouched run still loads


def test_interrupted_run_of_another_ppnet_version_is_not_resumed(tmp_path, monkeypatch):
    import ppnet
    from ppnet.rundir import prepare_run_dir

    config, inputs = small_config(), {"data": "log", "valid": None, "files": []}
    work = prepare_run_dir(tmp_path / "run", config, inputs, fresh=False)
    assert prepare_run_dir(tmp_path / "run", config, inputs, fresh=False) == work  # same version: resumed
    monkeypatch.setattr(ppnet, "__version__", "0.0.1")
    with pytest.raises(PPNetError, match=r"written by ppnet .* this is 0\.0\.1; .* --fresh"):
        prepare_run_dir(tmp_path / "run", config, inputs, fresh=False)
