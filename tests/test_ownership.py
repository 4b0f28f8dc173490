"""One process per run directory and per export base: an exclusive lock, taken over from the dead."""

import json
import os
import subprocess
import sys
import time

import pytest

from ppnet.cli import main
from ppnet.errors import PPNetError
from ppnet.files import exclusive_lock, lock_file
from tests.helpers import DEFAULT_CONFIG, SMALL_OVERRIDES


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    target = tmp_path / "run"
    with exclusive_lock(target, "the run directory"):
        with pytest.raises(PPNetError) as refused, exclusive_lock(target, "the run directory"):
            pass
        assert f"in use by process {os.getpid()}" in str(refused.value) and str(target) in str(refused.value)
    with exclusive_lock(target, "the run directory"):  # released at the end of the block
        assert lock_file(target).read_text() == str(os.getpid())


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    target = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file(target).write_text(dead.stdout.strip())  # the file of a holder that is gone
    with exclusive_lock(target, "the run directory"):
        assert lock_file(target).read_text() == str(os.getpid())


def test_a_lock_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PPNetError, match="cannot create"), exclusive_lock(tmp_path / "file" / "run", "the run"):
        pass


def test_export_into_a_base_another_export_holds_is_refused(trained_run, tmp_path, capsys):
    base = tmp_path / "exports"
    with exclusive_lock(base, "the export base"):
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
