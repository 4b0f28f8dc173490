"""Outputs: one process per run directory and export base (an exclusive lock, taken over from the
dead), output paths checked before any work, and ``--overwrite`` replacing only ppnet's own."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppnet.cli import main
from ppnet.errors import PPNetError
from ppnet.files import exclusive_lock, lock_file
from tests.helpers import DEFAULT_CONFIG, SMALL_OVERRIDES


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    target = tmp_path / "run"
    with exclusive_lock(target, "run directory"):
        with pytest.raises(PPNetError) as refused, exclusive_lock(target, "run directory"):
            pass
        assert f"in use by process {os.getpid()}" in str(refused.value) and str(target) in str(refused.value)
    with exclusive_lock(target, "run directory"):  # released at the end of the block
        assert lock_file(target).read_text() == str(os.getpid())


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    target = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file(target).write_text(dead.stdout.strip())  # the file of a holder that is gone
    with exclusive_lock(target, "run directory"):
        assert lock_file(target).read_text() == str(os.getpid())


def test_a_lock_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PPNetError, match="which is a file"), exclusive_lock(tmp_path / "file" / "run", "run directory"):
        pass


def test_export_into_a_base_another_export_holds_is_refused(trained_run, tmp_path, capsys):
    base = tmp_path / "exports"
    with exclusive_lock(base, "export base"):
        assert main(["export", "--run", str(trained_run), "--out", str(base)]) == 2
    assert f"in use by process {os.getpid()}" in capsys.readouterr().err
    assert not base.exists()
    assert main(["export", "--run", str(trained_run), "--out", str(base)]) == 0
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_two_trainings_into_one_run_directory_one_is_refused(synthetic_dir, tmp_path):
    """Two real processes: the second fails at once naming the first, which finishes a whole run."""
    out = tmp_path / "run"
    sets = [arg for item in [*SMALL_OVERRIDES, "train.epochs=3"] for arg in ("--set", item)]
    command = [sys.executable, "-m", "ppnet.cli", "train", "--config", str(DEFAULT_CONFIG)]
    command += ["--data", str(synthetic_dir), "--out", str(out), *sets]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (lock_file(out).exists() and lock_file(out).read_text() == str(first.pid)):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
        time.sleep(0.05)
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.strip().splitlines()[-1] == (
        f"ppnet: error: {out}: the run directory is in use by process {first.pid} "
        f"(lock {lock_file(out)}); wait for it to end or stop it"
    )
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert {"config.json", "stats.json", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] >= 1


def _odd_out(tmp_path, kind: str):
    """An output path of the given ``kind`` that cannot become a run directory, and what the error says."""
    (tmp_path / "file").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return {
        "file": (tmp_path / "file", "is a file"),
        "under_file": (tmp_path / "file" / "run", "which is a file"),
        "dangling_symlink": (tmp_path / "dangling", "is a symbolic link"),
        "dot": (Path("."), "not a name for a new run directory"),
    }[kind]


@pytest.mark.parametrize("kind", ["file", "under_file", "dangling_symlink", "dot"])
def test_train_refuses_an_out_that_cannot_be_a_run_directory_before_any_work(synthetic_dir, tmp_path, capsys, kind):
    out, expected = _odd_out(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    sets = [arg for item in SMALL_OVERRIDES for arg in ("--set", item)]
    argv = ["train", "--config", str(DEFAULT_CONFIG), "--data", str(synthetic_dir), "--out", str(out), *sets]
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and err[-1].startswith("ppnet: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "file").read_text() == "mine"


def test_overwrite_replaces_only_what_ppnet_wrote(trained_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["prepare", "synthetic", "--out", str(mine), "--rows", "200", "--overwrite"]) == 2
    assert "ppnet did not write this prepared log" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    prepared = tmp_path / "log"
    for _ in range(2):  # the second --overwrite replaces ppnet's own prepared log
        assert main(["prepare", "synthetic", "--out", str(prepared), "--rows", "200", "--overwrite"]) == 0
    base = tmp_path / "exports"
    (base / "1").mkdir(parents=True)
    (base / "1" / "model.bin").write_text("someone else's")
    assert main(["export", "--run", str(trained_run), "--out", str(base), "--version", "1", "--overwrite"]) == 2
    assert "ppnet did not write this export version" in capsys.readouterr().err
    assert [p.name for p in (base / "1").iterdir()] == ["model.bin"]


def test_two_exports_into_one_base_get_two_versions_or_one_clear_refusal(trained_run, tmp_path):
    base = tmp_path / "exports"
    command = [sys.executable, "-m", "ppnet.cli", "export", "--run", str(trained_run), "--out", str(base)]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in both]
    versions = sorted(p.name for p in base.iterdir())
    assert sorted(code for code, _ in results) in ([0, 0], [0, 2])
    if [code for code, _ in results].count(0) == 2:
        assert versions == ["1", "2"]
    else:
        refused = next(err for code, err in results if code == 2).strip().splitlines()[-1]
        assert "the export base is in use by process" in refused and versions == ["1"]
