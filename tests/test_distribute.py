"""tf.distribute: deterministic sharding, TF_CONFIG roles, and real clusters on 127.0.0.1 (trained
from scratch, and continuing a local run)."""

import itertools
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from ppnet import distribute
from ppnet.data.schema import input_kinds, to_arrays
from ppnet.data.split import Split
from ppnet.errors import PPNetError
from ppnet.evaluate import load_export
from ppnet.rundir import load_run
from ppnet.stats import Stats
from ppnet.train import train
from tests.helpers import MULTITASK_CONFIG, SMALL_OVERRIDES, multitask_config

# A parent run and its continuation: the user_id table (hashed, 4 MiB) makes the 16-dim tables big
# enough for the parameter servers to shard them, and so do the towers' first kernels (1024 units);
# video_id (min_count 1, in the same table) grows.
CONTINUED = (
    "model.hidden_units=[1024, 16]",
    "train.epochs=1",
    "train.precision=float32",
    "features.user_id.kind=hash",
    "features.user_id.bins=65536",
    *(f"features.{n}.min_count=1" for n in ("video_id", "author_id")),
)


def row_ids(split):
    return [
        v
        for _, batch in split.batches(["user_id", "video_id", "hour"])
        for v in zip(*(batch.column(i).to_pylist() for i in range(3)))
    ]


@pytest.mark.parametrize("workers", [2, 3, 8, 20])
def test_shards_cover_every_row_exactly_once(synthetic_dir, tmp_path, workers):
    files = sorted(synthetic_dir.glob("*.parquet"))
    for file in files[:2]:  # small row groups, so that 20 workers over 2 files split by row group
        pq.write_table(pq.read_table(file), tmp_path / file.name, row_group_size=100)
    split = Split(tuple(sorted(tmp_path.glob("*.parquet"))))
    shards = [split.shard(i, workers) for i in range(workers)]
    assert sorted(itertools.chain.from_iterable(row_ids(s) for s in shards)) == sorted(row_ids(split))
    assert [s.files for s in shards] == [split.shard(i, workers).files for i in range(workers)]  # deterministic
    if workers > len(split.files):
        assert all(s.row_groups for s in shards)


def test_role_comes_from_tf_config(monkeypatch):
    assert distribute.current_role("local").is_chief
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    role = distribute.current_role("multi_worker")
    assert (role.index, role.count, role.is_chief) == (1, 2, False)
    monkeypatch.setenv("TF_CONFIG", "{}")
    with pytest.raises(PPNetError, match="TF_CONFIG"):
        distribute.current_role("multi_worker")


def launch_local(
    data, run, cluster: list[str], sets: list[str], extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``ppnet launch-local`` with the small multi-task config (pepnet on three tasks: it exercises
    the most parts), ``sets`` and ``extra`` ``ppnet train`` arguments, its output captured."""
    overrides = [arg for item in [*SMALL_OVERRIDES, *sets] for arg in ("--set", item)]
    command = [sys.executable, "-m", "ppnet.cli", "launch-local", *cluster, "--timeout", "500", "--"]
    train_args = ["--config", str(MULTITASK_CONFIG), "--data", str(data), "--out", str(run), *overrides, *extra]
    return subprocess.run([*command, *train_args], capture_output=True, text=True, timeout=600)


def assert_tensorflow_alone_loads_the_export(run) -> None:
    """The run's export loads in a fresh interpreter that cannot import ppnet."""
    code = (
        "import sys; sys.modules['ppnet'] = None; import tensorflow as tf; "
        f"print(list(tf.saved_model.load('{run / 'export' / '1'}').signatures))"
    )
    reload = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "serving_default" in reload.stdout, reload.stderr[-2000:]


def test_two_worker_multi_worker_mirrored_run_reports_global_metrics(synthetic_dir, tmp_path):
    run = tmp_path / "run"
    result = launch_local(synthetic_dir, run, ["--workers", "2"], ["train.epochs=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["workers"] == 2 and all(0.5 < task["auc"] <= 1.0 for task in metrics["tasks"].values())
    # Epoch logs are global metric values: an AUC summed over 2 replicas would exceed 1.
    logged = [float(v) for v in re.findall(r" - auc_long_view: ([0-9.]+)", result.stdout)]
    assert len(logged) == 2 and all(0.4 < v <= 1.0 for v in logged)
    val_logged = [float(v) for v in re.findall(r"val_auc_long_view: ([0-9.]+)", result.stdout)]
    scores = [float(v) for v in re.findall(r"val_score: ([0-9.]+)", result.stdout)]
    best = val_logged[scores.index(max(scores))]
    assert best == pytest.approx(metrics["tasks"]["long_view"]["auc"], abs=1e-4)  # exported epoch == best logged
    assert_tensorflow_alone_loads_the_export(run)


@pytest.fixture(scope="module")
def early_days(synthetic_dir, tmp_path_factory):
    """The synthetic log's first five days."""
    root = tmp_path_factory.mktemp("early")
    for file in sorted(synthetic_dir.glob("*.parquet"))[:5]:
        shutil.copy(file, root / file.name)
    return root


@pytest.fixture(scope="module")
def local_parents(early_days, tmp_path_factory):
    """Runs trained without tf.distribute on the first five days, by ``model.task_sharing``
    (each trained when first asked for)."""
    runs = {}

    def parent(sharing: str):
        if sharing not in runs:
            runs[sharing] = tmp_path_factory.mktemp(f"parent-{sharing}") / "run"
            train(multitask_config(*CONTINUED, f'model.task_sharing="{sharing}"'), str(early_days), runs[sharing])
        return runs[sharing]

    return parent


def export_scores(run, split: Split) -> dict[str, np.ndarray]:
    """The run's export's probabilities by task on ``split``'s first rows."""
    predict, _ = load_export(run / "export" / "1")
    kinds = input_kinds(multitask_config(*CONTINUED), list(split.files))
    _, batch = next(iter(split.batches(list(kinds), 2048)))
    return predict(to_arrays(batch, kinds))


TOLERANCE = 1e-4  # of a probability


@pytest.mark.parametrize(
    "cluster, sharing",
    [(["--workers", "2"], "joint"), (["--workers", "2", "--ps", "2"], "primary")],
    ids=["multi_worker", "parameter_server"],
)
def test_a_cluster_run_continues_a_local_run_grows_its_tables_and_exports(
    local_parents, early_days, synthetic_dir, tmp_path, cluster, sharing
):
    # under parameter servers the later tasks' own id tables ("primary") grow and shard as the shared ones
    local_parent, run = local_parents(sharing), tmp_path / "run"
    # All eight days (new video ids), at a learning rate too small to move a weight visibly: the
    # continued export must score the parent's rows as the parent does, new rows and all. Nothing
    # held out, as a production daily step runs (the other cluster tests validate every epoch).
    sets = [*CONTINUED, f'model.task_sharing="{sharing}"', "train.learning_rate=1e-9", "data.valid_last=0"]
    result = launch_local(synthetic_dir, run, cluster, sets, ("--init-from", str(local_parent)))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["init_from"] == str(local_parent.resolve()) and metrics["workers"] == 2
    assert "auc" not in metrics and "valid" not in metrics["splits"] and metrics["epochs_run"] == 1
    known = Stats.load(local_parent / "stats.json").vocabularies["video_id"]
    grown = Stats.load(run / "stats.json").vocabularies["video_id"]
    assert grown[: len(known)] == known and len(grown) > len(known)
    if "--ps" in cluster:
        [kernel] = [w for w in load_run(local_parent).tower.weights if "dense_0/kernel" in w.name]  # every tower's
        assert kernel.shape[1] == 1024 and kernel.shape.num_elements() * 4 > distribute.MIN_SHARD_BYTES
        shards = metrics["table_shards"]
        assert shards["embedding_dim16"] == 2 and shards["gate_embedding_dim16"] == 2  # split over both servers
        assert shards["is_like_gate_embedding_dim16"] == 2  # a later task's own id table
        assert shards["embedding_dim4"] == 1 and shards["domain_embedding_dim4"] == 1  # small tables stay whole
        assert not (run / "shards").exists()  # the workers' TFRecord input shards are scratch
        assert_tensorflow_alone_loads_the_export(run)
    rows = Split(tuple(sorted(early_days.glob("*.parquet"))))
    parent, child = export_scores(local_parent, rows), export_scores(run, rows)
    for task, scores in parent.items():
        assert np.ptp(scores) > 20 * TOLERANCE, "the parent's scores vary by far more than the tolerance"
        np.testing.assert_allclose(child[task], scores, atol=TOLERANCE, err_msg=task)
