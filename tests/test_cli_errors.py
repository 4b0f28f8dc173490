"""``ppnet`` on bad input: exit status 2, one ``ppnet: error:`` line naming the culprit, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppnet.cli import main
from tests.helpers import DEFAULT_CONFIG, MULTITASK_CONFIG, SMALL_OVERRIDES


def _fail(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI, expect exit status 2 and exactly one error line; return that line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, f"exit status {code}; stderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.splitlines() if line.startswith("ppnet: error: ")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").endswith(errors[0]), "the error message must be a single line"
    assert out == "", "no result is printed on failure"
    return errors[0]


def _train(capsys, config: Path, data, out: Path, *extra: str) -> str:
    sets = [arg for item in SMALL_OVERRIDES for arg in ("--set", item)]
    message = _fail(capsys, ["train", "--config", config, "--data", data, "--out", out, *sets, *extra])
    assert not out.exists(), f"{out} left behind"
    assert not out.with_name(out.name + ".partial").exists(), "a .partial run directory was left behind"
    return message


def _copy_log(synthetic_dir: Path, tmp_path: Path) -> list[Path]:
    shutil.copytree(synthetic_dir, tmp_path / "log")
    return sorted((tmp_path / "log").glob("*.parquet"))


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name and p.name.startswith(path.name))


# --- train --------------------------------------------------------------------------------------


def test_train_unknown_config_key(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text(DEFAULT_CONFIG.read_text().replace("[train]\n", "[train]\nepochz = 3\n"))
    message = _train(capsys, config, synthetic_dir, tmp_path / "run")
    assert str(config) in message and "epochz" in message


def test_train_missing_config(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    message = _train(capsys, tmp_path / "nope.toml", synthetic_dir, tmp_path / "run")
    assert "nope.toml" in message


def test_train_bad_override(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    message = _train(capsys, DEFAULT_CONFIG, synthetic_dir, tmp_path / "run", "--set", "model.name")
    assert "model.name" in message and "KEY=VALUE" in message
    message = _train(capsys, DEFAULT_CONFIG, synthetic_dir, tmp_path / "run", "--set", "features.device.dim=4")
    assert "'device'" in message


def test_train_data_matches_nothing(capsys, tmp_path: Path) -> None:
    pattern = f"{tmp_path}/nothing/*.parquet"
    message = _train(capsys, DEFAULT_CONFIG, pattern, tmp_path / "run")
    assert pattern in message and "no parquet files" in message


def test_train_missing_column(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    files = _copy_log(synthetic_dir, tmp_path)
    pq.write_table(pq.read_table(files[2]).drop_columns(["video_type"]), files[2])
    message = _train(capsys, DEFAULT_CONFIG, files[0].parent, tmp_path / "run")
    assert str(files[2]) in message and "'video_type'" in message


def test_train_corrupt_parquet(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    files = _copy_log(synthetic_dir, tmp_path)
    files[4].write_bytes(files[4].read_bytes()[:300])
    message = _train(capsys, DEFAULT_CONFIG, files[0].parent, tmp_path / "run")
    assert str(files[4]) in message and "parquet" in message


def test_train_bad_labels(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    files = _copy_log(synthetic_dir, tmp_path)
    table = pq.read_table(files[3])
    labels = table["is_click"].to_numpy().copy()
    labels[:4] = 2
    pq.write_table(table.set_column(table.schema.get_field_index("is_click"), "is_click", pa.array(labels)), files[3])
    message = _train(capsys, DEFAULT_CONFIG, files[0].parent, tmp_path / "run")
    assert str(files[3]) in message and "'is_click'" in message and " 4 " in message


def test_train_bad_labels_in_valid_file(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    valid = tmp_path / "valid.parquet"
    table = pq.read_table(sorted(synthetic_dir.glob("*.parquet"))[-1])
    labels = pa.array([None] * 3 + table["is_click"].to_pylist()[3:], pa.int64())
    pq.write_table(table.set_column(table.schema.get_field_index("is_click"), "is_click", labels), valid)
    message = _train(capsys, DEFAULT_CONFIG, synthetic_dir, tmp_path / "run", "--valid", valid)
    assert str(valid) in message and " 3 " in message


def test_train_a_task_label_missing_in_one_file(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    files = _copy_log(synthetic_dir, tmp_path)
    pq.write_table(pq.read_table(files[5]).drop_columns(["long_view"]), files[5])
    message = _train(capsys, MULTITASK_CONFIG, files[0].parent, tmp_path / "run")
    assert str(files[5]) in message and "'long_view'" in message


def test_train_a_mask_that_is_not_zero_or_one(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    files = _copy_log(synthetic_dir, tmp_path)
    for i, file in enumerate(files):  # a 0/1 column "seen", with five 3s in one file
        table = pq.read_table(file)
        seen = np.ones(table.num_rows, dtype=np.int64)
        seen[:5] = 3 if i == 2 else 1
        pq.write_table(table.append_column("seen", pa.array(seen)), file)
    config = tmp_path / "masked.toml"
    config.write_text(MULTITASK_CONFIG.read_text().replace('name = "is_like"\n', 'name = "is_like"\nmask = "seen"\n'))
    message = _train(capsys, config, files[0].parent, tmp_path / "run")
    assert str(files[2]) in message and "mask column 'seen' has 5 " in message and "0 or 1" in message


def test_train_a_model_too_large_for_the_machine_is_refused_before_it_is_built(capsys, synthetic_dir, tmp_path):
    message = _train(capsys, DEFAULT_CONFIG, synthetic_dir, tmp_path / "run", "--set", "model.hidden_units=[200000000]")
    assert "model.hidden_units" in message and "this machine" in message
    hashed = ["--set", "features.user_id.kind=hash", "--set", "features.user_id.bins=20000000"]
    message = _train(
        capsys, DEFAULT_CONFIG, synthetic_dir, tmp_path / "run", *hashed, "--set", "train.memory_limit_gib=1"
    )
    assert "features.user_id" in message and "train.memory_limit_gib" in message


@pytest.mark.parametrize("name", ["video type", "video/type", "_video_type", "vidéo_type"])
def test_train_a_feature_name_tensorflow_cannot_use_is_refused_when_the_config_is_read(
    capsys, synthetic_dir: Path, tmp_path: Path, name: str
) -> None:
    config = tmp_path / "names.toml"
    config.write_text(DEFAULT_CONFIG.read_text().replace('name = "video_type"', f'name = "{name}"'))
    message = _train(capsys, config, synthetic_dir, tmp_path / "run")
    assert str(config) in message and repr(name) in message and "rename the column" in message


def test_train_out_exists(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    sets = [arg for item in SMALL_OVERRIDES for arg in ("--set", item)]
    message = _fail(capsys, ["train", "--config", DEFAULT_CONFIG, "--data", synthetic_dir, "--out", out, *sets])
    assert str(out) in message and "--overwrite" in message
    assert (out / "keep.txt").read_text() == "mine", "the existing directory must be left untouched"
    assert _siblings(out) == [], "nothing written next to it"


# --- evaluate -----------------------------------------------------------------------------------


def test_evaluate_not_an_export(capsys, synthetic_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    message = _fail(capsys, ["evaluate", "--model", tmp_path / "model", "--data", synthetic_dir])
    assert str(tmp_path / "model") in message and "export" in message
    message = _fail(capsys, ["evaluate", "--model", tmp_path / "missing", "--data", synthetic_dir])
    assert str(tmp_path / "missing") in message


def test_evaluate_run_dir_instead_of_version_dir(capsys, trained_run: Path, synthetic_dir: Path) -> None:
    message = _fail(capsys, ["evaluate", "--model", trained_run, "--data", synthetic_dir])
    assert str(trained_run) in message and "export" in message


def test_evaluate_single_class(capsys, trained_run: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    table = pq.read_table(sorted(synthetic_dir.glob("*.parquet"))[-1])
    assert 0 < sum(table["is_click"].to_pylist()) < table.num_rows  # the original has both classes
    zeros = pa.array(np.zeros(table.num_rows, dtype=np.int64))
    data = tmp_path / "no_clicks.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("is_click"), "is_click", zeros), data)
    report = tmp_path / "metrics.json"
    message = _fail(capsys, ["evaluate", "--model", trained_run / "export" / "1", "--data", data, "--json", report])
    assert str(data) in message and "AUC is undefined" in message and str(table.num_rows) in message
    assert not report.exists() and list(tmp_path.iterdir()) == [data]


def test_evaluate_missing_column(capsys, trained_run: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "no_hour.parquet"
    pq.write_table(pq.read_table(sorted(synthetic_dir.glob("*.parquet"))[0]).drop_columns(["hour"]), data)
    message = _fail(capsys, ["evaluate", "--model", trained_run / "export" / "1", "--data", data])
    assert str(data) in message and "'hour'" in message


def test_evaluate_by_a_missing_column(capsys, trained_run: Path, synthetic_dir: Path) -> None:
    message = _fail(
        capsys, ["evaluate", "--model", trained_run / "export" / "1", "--data", synthetic_dir, "--by", "nope"]
    )
    assert "'nope' missing" in message and "--by" in message and ".parquet" in message


def test_evaluate_json_is_a_directory(capsys, trained_run: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    message = _fail(
        capsys, ["evaluate", "--model", trained_run / "export" / "1", "--data", synthetic_dir, "--json", tmp_path]
    )
    assert str(tmp_path) in message and "directory" in message
    assert list(tmp_path.iterdir()) == [] and _siblings(tmp_path) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "synthetic", "--out", "OUT", "--rows", "0"],
        ["export", "--run", "RUN", "--out", "OUT", "--version", "-2"],
    ],
)
def test_counts_and_versions_must_be_positive(capsys, tmp_path: Path, argv: list[str]) -> None:
    argv = [str(tmp_path / a) if a in ("OUT", "RUN") else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- prepare ------------------------------------------------------------------------------------


def test_prepare_synthetic_out_exists(capsys, tmp_path: Path) -> None:
    out = tmp_path / "log"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = _fail(capsys, ["prepare", "synthetic", "--out", out, "--rows", "100"])
    assert str(out) in message and "--overwrite" in message
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _siblings(out) == []
