"""What tests share besides fixtures: paths, the small test config. Tests import it as ``tests.helpers``
(pytest puts the repo root on ``sys.path``); fixtures live in ``conftest.py``."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "ppnet" / "configs" / "default.toml"
MULTITASK_CONFIG = REPO / "ppnet" / "configs" / "multitask.toml"  # pepnet on click, long_view, like
KUAIRAND = REPO.parent / "shared" / "data" / "kuairand-pure"
# Small enough to train in seconds, big enough that every vocabulary has values.
SMALL_OVERRIDES = [
    "model.hidden_units=[32, 16]",
    "model.gate_hidden=8",
    "train.epochs=2",
    "train.batch_size=256",
    "data.shuffle_buffer=4096",
    "train.backup_every_steps=0",
]


def small_config(*extra: str):
    """The default config shrunk by ``SMALL_OVERRIDES``, then ``extra`` overrides."""
    from ppnet.config import load_config

    return load_config(DEFAULT_CONFIG, [*SMALL_OVERRIDES, *extra])


def multitask_config(*extra: str):
    """The multi-task config (pepnet on the synthetic log's three labels) shrunk like ``small_config``."""
    from ppnet.config import load_config

    return load_config(MULTITASK_CONFIG, [*SMALL_OVERRIDES, *extra])
