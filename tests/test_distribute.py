"""tf.distribute: deterministic sharding, TF_CONFIG roles, and a real 2-worker cluster on 127.0.0.1."""

import itertools
import json
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from ppnet import distribute
from ppnet.data.split import Split
from ppnet.errors import PPNetError
from tests.helpers import MULTITASK_CONFIG, SMALL_OVERRIDES


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


def launch_local(data, run, cluster: list[str], sets: list[str]) -> subprocess.CompletedProcess:
    """``ppnet launch-local`` with the small multi-task config (pepnet on three tasks: it exercises
    the most parts) and ``sets``, its output captured."""
    overrides = [arg for item in [*SMALL_OVERRIDES, *sets] for arg in ("--set", item)]
    command = [sys.executable, "-m", "ppnet.cli", "launch-local", *cluster, "--timeout", "500", "--"]
    train_args = ["--config", str(MULTITASK_CONFIG), "--data", str(data), "--out", str(run), *overrides]
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


def test_parameter_server_run_partitions_tables_and_exports(synthetic_dir, tmp_path):
    run = tmp_path / "run"
    extra = ["train.epochs=2", "features.user_id.kind=hash", "features.user_id.bins=65536"]  # 4 MiB table
    result = launch_local(synthetic_dir, run, ["--workers", "2", "--ps", "2"], extra)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["workers"] == 2 and all(0.5 < task["auc"] <= 1.0 for task in metrics["tasks"].values())
    shards = metrics["table_shards"]
    assert shards["embedding_dim16"] == 2 and shards["gate_embedding_dim16"] == 2  # split over both servers
    assert shards["embedding_dim4"] == 1 and shards["domain_embedding_dim4"] == 1  # small tables stay whole
    assert not (run / "shards").exists()  # the workers' TFRecord input shards are scratch
    assert_tensorflow_alone_loads_the_export(run)
