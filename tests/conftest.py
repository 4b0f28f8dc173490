"""Shared fixtures: a tiny synthetic click log, a small config, and one trained run per session."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports tf.keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "ppnet" / "configs" / "default.toml"
KUAIRAND = REPO.parent / "shared" / "data" / "kuairand-pure"
# Small enough to train in seconds, big enough that every vocabulary has values.
SMALL_OVERRIDES = ["model.hidden_units=[32, 16]", "model.gate_hidden=8", "train.epochs=2",
                   "train.batch_size=256", "data.shuffle_buffer=4096", "train.backup_every_steps=0"]


def small_config(*extra: str):
    from ppnet.config import load_config

    return load_config(DEFAULT_CONFIG, [*SMALL_OVERRIDES, *extra])


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
