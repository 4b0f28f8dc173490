"""Damaged state: a one-line error, or recovery where it is safe; leftovers of killed processes."""

import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppnet.cli import main
from ppnet.data.schema import read_schema
from ppnet.errors import PPNetError
from ppnet.files import remove_leftovers
from ppnet.rundir import EPOCHS_FILE, drop_torn_line, epoch_scores


def _one_error_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_a_truncated_config_in_a_run_is_one_line(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.json").write_text((run / "config.json").read_text()[:50])
    line = _one_error_line(capsys, ["export", "--run", run, "--out", tmp_path / "exports"])
    assert str(run / "config.json") in line and "damaged" in line
    assert not (tmp_path / "exports").exists()


def test_a_broken_export_metadata_is_one_line(trained_run, synthetic_dir, tmp_path, capsys):
    export = tmp_path / "export"
    shutil.copytree(trained_run / "export" / "1", export)
    (export / "assets.extra" / "ppnet.json").write_text("{not json")
    line = _one_error_line(capsys, ["evaluate", "--model", export, "--data", synthetic_dir])
    assert str(export / "assets.extra" / "ppnet.json") in line and "damaged" in line


def test_a_torn_last_epoch_line_is_dropped_and_a_torn_middle_one_is_an_error(tmp_path):
    whole = [json.dumps({"epoch": 1, "val_auc": 0.6}), json.dumps({"epoch": 2, "val_auc": 0.7})]
    (tmp_path / EPOCHS_FILE).write_text(whole[0] + "\n" + whole[1] + "\n" + '{"epoch": 3, "val_')
    assert [e["epoch"] for e in epoch_scores(tmp_path)] == [1, 2]
    drop_torn_line(tmp_path / EPOCHS_FILE)  # on resume, so the next append starts a line of its own
    assert (tmp_path / EPOCHS_FILE).read_text() == whole[0] + "\n" + whole[1] + "\n"
    (tmp_path / EPOCHS_FILE).write_text(whole[0] + "\n{torn\n" + whole[1] + "\n")
    with pytest.raises(PPNetError, match="line 2 is not JSON"):
        epoch_scores(tmp_path)


def test_a_parquet_file_with_a_duplicated_column_is_refused(tmp_path):
    file = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([3])], names=["a", "b", "a"]), file)
    with pytest.raises(PPNetError, match=r"\['a'\] appear more than once"):
        read_schema(file)


def test_leftovers_of_a_killed_process_are_removed_a_live_ones_are_kept(tmp_path):
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )
    target = tmp_path / "log"
    (tmp_path / f".log.tmp-{dead}").mkdir()
    (tmp_path / f".log.tmp-{dead}" / "part-1.parquet").write_text("half")
    (tmp_path / f".log.old-{dead}").mkdir()
    (tmp_path / ".log.json.tmp-1").write_text("")  # another target's (log.json): not ours to judge
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".log.tmp-{live.pid}").mkdir()
        remove_leftovers(target)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".log.json.tmp-1", f".log.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()


def test_prepare_after_a_killed_prepare_removes_its_temporary_directory(tmp_path, capsys):
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )
    stale = tmp_path / f".log.tmp-{dead}"
    stale.mkdir()
    pq.write_table(pa.table({"x": [1]}), stale / "part-20220601.parquet")
    assert main(["prepare", "synthetic", "--out", str(tmp_path / "log"), "--rows", "200"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]  # the stale directory is gone
