"""What a ppnet command prints: its own lines, none of TensorFlow's start-up chatter unless asked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ppnet.console import VERBOSE_ENV, muted_stderr
from tests.helpers import DEFAULT_CONFIG, REPO, SMALL_OVERRIDES

# Every line ppnet itself writes to stderr: its log format, or its one-line error.
PPNET_LINE = re.compile(r"^(\d\d:\d\d:\d\d ppnet\.[\w.]+: |ppnet: error: )")
TENSORFLOW_CHATTER = re.compile(r"absl|oneDNN|cuda|cuInit|CUDA|port\.cc|cpu_feature_guard|table_initializer")


def _ppnet(*argv: str) -> subprocess.CompletedProcess:
    """``ppnet ARGV`` in a fresh interpreter, with none of the variables that would change its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", VERBOSE_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "ppnet.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_train_prints_ppnet_lines_and_nothing_of_tensorflow(synthetic_dir: Path, tmp_path: Path) -> None:
    # one thread per op (train.intra_op_threads), set before TensorFlow starts in the process
    sets = [arg for item in [*SMALL_OVERRIDES, "train.intra_op_threads=1"] for arg in ("--set", item)]
    run = tmp_path / "run"
    done = _ppnet("train", "--config", str(DEFAULT_CONFIG), "--data", str(synthetic_dir), "--out", str(run), *sets)
    assert done.returncode == 0, done.stderr
    stderr = done.stderr.splitlines()
    assert [line for line in stderr if not PPNET_LINE.match(line)] == []
    assert any(f"run directory: {run}" in line for line in stderr)
    assert not TENSORFLOW_CHATTER.search(done.stdout)
    assert json.loads((run / "metrics.json").read_text())["intra_op_threads"] == 1


def test_verbose_brings_tensorflow_logs_back(tmp_path: Path) -> None:
    # The cheapest command that loads TensorFlow: an export of a run that does not exist.
    quiet = _ppnet("export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "export"))
    verbose = _ppnet("export", "--verbose", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "export"))
    assert quiet.returncode == verbose.returncode == 2
    assert [line for line in quiet.stderr.splitlines() if not PPNET_LINE.match(line)] == []
    assert [line for line in verbose.stderr.splitlines() if not PPNET_LINE.match(line)] != []


def test_muted_stderr_hides_native_output_unless_the_block_fails(capfd: pytest.CaptureFixture) -> None:
    with muted_stderr():
        os.write(2, b"native start-up line\n")
    assert "native start-up line" not in capfd.readouterr().err

    with pytest.raises(ImportError), muted_stderr():
        os.write(2, b"why the library failed to load\n")
        raise ImportError("broken install")
    assert "why the library failed to load" in capfd.readouterr().err
