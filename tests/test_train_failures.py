"""Training that goes wrong stops with a clear error and keeps what is needed to recover."""

import pytest

from ppnet.errors import PPNetError
from ppnet.train import train
from tests.conftest import small_config


def test_nan_loss_stops_with_step_and_hint_and_keeps_the_backup(synthetic_dir, tmp_path):
    config = small_config("train.learning_rate=1e30", "train.optimizer=sgd", "train.backup_every_steps=1")
    with pytest.raises(PPNetError, match=r"training loss became (nan|inf).*step \d+.*learning_rate") as error:
        train(config, str(synthetic_dir), tmp_path / "run")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()
    assert any((tmp_path / "run.partial" / "backup").rglob("*")), "the last good backup was deleted"

