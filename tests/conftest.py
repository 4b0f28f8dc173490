"""Shared fixtures: a tiny synthetic click log and one trained run per session (helpers: ``tests/helpers.py``)."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports tf.keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import pytest

from tests.helpers import multitask_config, small_config


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """8 daily parquet files of the synthetic log, 8000 rows in all."""
    from ppnet.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "log"
    write_synthetic(out, rows=8000, seed=1)
    return out


@pytest.fixture(scope="session")
def trained_run(synthetic_dir, tmp_path_factory) -> Path:
    """A finished PPNet run directory (metrics.json, checkpoints, export/1)."""
    from ppnet.train import train

    run = tmp_path_factory.mktemp("runs") / "ppnet"
    train(small_config(), str(synthetic_dir), run)
    return run


@pytest.fixture(scope="session")
def multitask_run(synthetic_dir, tmp_path_factory) -> Path:
    """A finished pepnet run on three tasks (is_click, long_view, is_like)."""
    from ppnet.train import train

    run = tmp_path_factory.mktemp("runs") / "pepnet"
    train(multitask_config(), str(synthetic_dir), run)
    return run
