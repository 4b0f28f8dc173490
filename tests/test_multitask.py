"""Several tasks: per-task towers, losses, masks and metrics, the selection rule, and the export's
named outputs (``probability_<task>``) served by TensorFlow alone."""

import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from ppnet.cli import main
from ppnet.config import config_from_dict
from ppnet.data.pipeline import iter_batches
from ppnet.data.schema import input_kinds, to_arrays
from ppnet.data.split import Split, make_splits
from ppnet.errors import PPNetError
from ppnet.evaluate import evaluate_export, model_predictor, score_split
from ppnet.model import build_model
from ppnet.rundir import EPOCHS_FILE, load_run
from ppnet.stats import compute_stats
from tests.helpers import MULTITASK_CONFIG, SMALL_OVERRIDES, multitask_config

TASKS = ["is_click", "long_view", "is_like"]
BUILDS_ON = 'tasks.long_view.builds_on="is_click"'
TASK_FEATURES = '["video_type", "tab", "hour"]'  # tables of two dimensions (tab's is 4)

RELOAD_SCRIPT = """
import sys
sys.modules["ppnet"] = None  # the export must serve without ppnet
import numpy as np, tensorflow as tf
export, inputs, output = sys.argv[1:4]
arrays = dict(np.load(inputs, allow_pickle=True))
signatures = tf.saved_model.load(export).signatures
served = signatures["serving_default"](**{k: tf.constant(v) for k, v in arrays.items()})
gates = signatures["gates"](**{k: tf.constant(v) for k, v in arrays.items()})
np.savez(output, **{k: v.numpy() for k, v in {**served, **gates}.items()})
"""


def served_without_ppnet(export, arrays: dict[str, np.ndarray], tmp_path) -> dict[str, np.ndarray]:
    """Every output of ``export``'s ``serving_default`` and ``gates`` on ``arrays``, computed in a
    fresh process that cannot import ppnet."""
    np.savez(tmp_path / "inputs.npz", **arrays)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    command = [sys.executable, "-c", RELOAD_SCRIPT, str(export), str(tmp_path / "inputs.npz"), str(tmp_path / "o.npz")]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(np.load(tmp_path / "o.npz"))


def with_tasks(tasks: list[dict], *sets: str):
    """The multi-task config with ``tasks`` as its ``[[tasks]]`` (shrunk like the test config)."""
    from ppnet.config import apply_override

    raw = tomllib.loads(MULTITASK_CONFIG.read_text())
    raw["tasks"] = tasks
    for item in [*SMALL_OVERRIDES, *sets]:
        apply_override(raw, item)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def split_and_stats(synthetic_dir):
    config = multitask_config()
    train_split, valid_split = make_splits(config, synthetic_dir, None)
    kinds = input_kinds(config, list(train_split.files))
    return train_split, valid_split, kinds


def batch(split, kinds, targets, rows=256):
    features, values = next(iter_batches(split, kinds, targets, rows))
    return {k: tf.constant(v) for k, v in features.items()}, {k: tf.constant(v) for k, v in values.items()}


def test_the_run_scores_every_task_and_picks_the_epoch_by_their_mean_auc(multitask_run):
    metrics = json.loads((multitask_run / "metrics.json").read_text())
    assert list(metrics["tasks"]) == TASKS and metrics["select_by"] == "mean"
    assert metrics["auc"] == metrics["tasks"]["is_click"]["auc"]  # the first task is the primary one
    assert all(0.5 < metrics["tasks"][t]["auc"] <= 1.0 for t in TASKS)
    epochs = [json.loads(line) for line in (multitask_run / EPOCHS_FILE).read_text().splitlines()]
    assert len(epochs) == 2
    for epoch in epochs:
        assert epoch["val_score"] == pytest.approx(np.mean([epoch[f"val_auc_{t}"] for t in TASKS]))
        assert {f"val_{m}_{t}" for m in ("auc", "gauc", "logloss") for t in TASKS} <= set(epoch)
    assert metrics["best_epoch"] == max(epochs, key=lambda e: e["val_score"])["epoch"]
    best = next(e for e in epochs if e["epoch"] == metrics["best_epoch"])
    assert metrics["tasks"]["long_view"]["auc"] == pytest.approx(best["val_auc_long_view"], abs=1e-6)


def test_export_names_every_task_and_serves_the_model_without_ppnet(multitask_run, synthetic_dir, tmp_path):
    kinds = json.loads((multitask_run / "stats.json").read_text())["kinds"]
    _, rows = next(Split((sorted(synthetic_dir.glob("*.parquet"))[-1],)).batches(list(kinds), 300))
    arrays = to_arrays(rows, kinds)
    served = served_without_ppnet(multitask_run / "export" / "1", arrays, tmp_path)
    model = load_run(multitask_run)
    output = model.forward({k: tf.constant(v) for k, v in arrays.items()})
    for task in TASKS:
        expected = tf.sigmoid(output.logits[task]).numpy()
        np.testing.assert_allclose(served[f"probability_{task}"], expected, rtol=1e-5, atol=1e-6)
        layers = len(model.config.model.hidden_units) + 1
        assert [f"gate_{task}_{i}" in served for i in range(layers)] == [True] * layers
    np.testing.assert_array_equal(served["probability"], served["probability_is_click"])
    assert "epnet_gate" in served
    assert not np.allclose(served["probability_is_click"], served["probability_long_view"])


def test_evaluate_reports_each_task_and_refuses_a_single_label(multitask_run, synthetic_dir):
    export = multitask_run / "export" / "1"
    valid = sorted(synthetic_dir.glob("*.parquet"))[-1]  # the run's validation day
    result = evaluate_export(export, valid)
    trained = json.loads((multitask_run / "metrics.json").read_text())
    assert list(result["tasks"]) == TASKS
    for task in TASKS:
        assert result["tasks"][task]["auc"] == pytest.approx(trained["tasks"][task]["auc"], abs=1e-4)
    with pytest.raises(PPNetError, match="each scored on its own label"):
        evaluate_export(export, valid, label="is_click")


def test_evaluate_by_a_column_scores_each_value_as_its_rows_alone(multitask_run, synthetic_dir, tmp_path, capsys):
    export = multitask_run / "export" / "1"
    valid = sorted(synthetic_dir.glob("*.parquet"))[-1]
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(export),
                "--data",
                str(valid),
                "--by",
                "tab",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert "by tab:" in capsys.readouterr().out
    result = json.loads((tmp_path / "m.json").read_text())
    table = pq.read_table(valid)
    for task in TASKS:
        by_tab = result["tasks"][task]["by"]["tab"]
        assert sum(s["rows"] for s in by_tab.values()) == result["tasks"][task]["rows"], "every scored row in one slice"
    biggest = max(by_tab, key=lambda value: by_tab[value]["rows"])
    alone = tmp_path / "one_tab.parquet"
    pq.write_table(table.filter(pc.equal(table["tab"], int(biggest))), alone)
    scored_alone = evaluate_export(export, alone)
    for task in TASKS:  # masked tasks too: a slice holds the task's kept rows of that value
        for key in ("auc", "gauc", "logloss", "rows"):
            assert result["tasks"][task]["by"]["tab"][biggest][key] == pytest.approx(scored_alone["tasks"][task][key])


def test_untrained_pepnet_is_the_multi_task_dnn(split_and_stats):
    """EPNet's and every tower's gates start at 1: with the dnn's weights, pepnet computes the dnn."""
    train_split, _, kinds = split_and_stats
    config = multitask_config()
    stats = compute_stats(config, train_split, kinds)
    pepnet = build_model(config, stats)
    dnn = build_model(multitask_config("model.name=dnn", "model.domain_features=[]"), stats)
    for group, table in dnn.embeddings.items():
        pepnet.embeddings[group].set_weights(table.get_weights())
    for task, tower in dnn.towers().items():
        for mine, theirs in zip(pepnet.towers()[task].dense, tower.dense, strict=True):
            mine.set_weights(theirs.get_weights())
    features, _ = batch(train_split, kinds, TASKS)
    ours, theirs = pepnet.forward(features).logits, dnn.forward(features).logits
    for task in TASKS:
        np.testing.assert_allclose(ours[task].numpy(), theirs[task].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(ours["is_click"].numpy(), ours["long_view"].numpy())  # towers of their own


@pytest.mark.parametrize("name", ["ppnet", "pepnet", "dnn", "mmoe"])
def test_every_model_trains_one_tower_per_task(split_and_stats, name):
    train_split, _, kinds = split_and_stats
    sets = [f"model.name={name}", *([] if name == "pepnet" else ["model.domain_features=[]"])]
    config = multitask_config(*sets)
    model = build_model(config, compute_stats(config, train_split, kinds))
    features, targets = batch(train_split, kinds, TASKS)
    with tf.GradientTape() as tape:
        loss = model.compute_loss((features, targets), training=True)
    assert np.isfinite(float(loss))
    towers = model.towers()
    gradients = tape.gradient(loss, [tower.dense[-1].kernel for tower in towers.values()])
    for task, gradient in zip(towers, gradients, strict=True):
        assert gradient is not None and float(tf.reduce_sum(tf.abs(gradient))) > 0, task
    assert list(model.forward(features).logits) == TASKS


def test_task_weights_weigh_the_losses(split_and_stats):
    train_split, _, kinds = split_and_stats
    tasks = [{"name": "is_click"}, {"name": "long_view", "weight": 3.0}]
    config = with_tasks(tasks, "model.name=dnn", "model.domain_features=[]", "model.embedding_l2=0")
    features, targets = batch(train_split, kinds, ["is_click", "long_view"])
    model = build_model(config, compute_stats(config, train_split, kinds))
    logits = model.forward(features).logits
    expected = sum(
        float(t.get("weight", 1.0))
        * float(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(targets[t["name"]], logits[t["name"]])))
        for t in tasks
    )
    assert float(model.compute_loss((features, targets))) == pytest.approx(expected, rel=1e-5)


def test_a_masked_task_learns_and_is_scored_only_where_its_mask_is_one(split_and_stats):
    train_split, valid_split, kinds = split_and_stats
    config = with_tasks(
        [{"name": "is_click"}, {"name": "is_like", "mask": "is_click"}], "model.name=dnn", "model.domain_features=[]"
    )
    stats = compute_stats(config, train_split, kinds)
    rows = pds.dataset(list(train_split.files)).to_table(columns=["is_click", "is_like"], filter=train_split.filter)
    clicks, likes = rows["is_click"].to_numpy(), rows["is_like"].to_numpy()
    assert stats.rate("is_like") == pytest.approx(likes[clicks == 1].mean())  # its logit bias: likes per click
    model = build_model(config, stats)
    features, targets = batch(train_split, kinds, config.target_columns)
    loss = float(model.compute_loss((features, targets)))
    mask = targets["is_click"].numpy() == 1
    assert 0 < mask.sum() < mask.size
    flipped = targets["is_like"].numpy().copy()
    flipped[~mask] = 1 - flipped[~mask]  # labels the mask hides
    hidden = float(model.compute_loss((features, {**targets, "is_like": tf.constant(flipped)})))
    assert hidden == pytest.approx(loss, rel=1e-6)
    flipped = targets["is_like"].numpy().copy()
    flipped[mask] = 1 - flipped[mask]
    seen = float(model.compute_loss((features, {**targets, "is_like": tf.constant(flipped)})))
    assert seen != pytest.approx(loss, rel=1e-3)
    result = score_split(model_predictor(model, kinds), valid_split, kinds, config.tasks, config.data.user_column)
    assert result["tasks"]["is_like"]["rows"] == round(result["tasks"]["is_click"]["observed_ctr"] * result["rows"])


def test_ppnet_evaluate_prints_one_row_per_task_and_nests_the_json(multitask_run, synthetic_dir, tmp_path, capsys):
    from ppnet.cli import main

    valid = sorted(synthetic_dir.glob("*.parquet"))[-1]
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(multitask_run / "export" / "1"),
                "--data",
                str(valid),
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    written = json.loads((tmp_path / "m.json").read_text())
    assert lines[1].split() == ["auc", "gauc", "gauc_users", "logloss", "rows", "mean_prediction", "observed_ctr"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert list(rows) == TASKS
    for task in TASKS:
        assert float(rows[task][0]) == pytest.approx(written["tasks"][task]["auc"], abs=5e-5)


def test_tensorboard_has_every_task_validation_metrics(multitask_run):
    tags = {
        value.tag
        for path in (multitask_run / "logs" / "validation").iterdir()
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert {f"epoch_{m}_{t}" for m in ("auc", "gauc", "logloss") for t in TASKS} | {"epoch_score"} <= tags


def shared_and_own_variables(model) -> tuple[list[tf.Variable], dict[str, list[tf.Variable]]]:
    """The variables every task's tower reads (shared tables, EPNet) and each task's own (its
    tower, and under ``task_sharing = "primary"`` its personal-id tables and those of
    ``model.task_features``), by task."""
    tables = [getattr(model, "task_gate_embeddings", {}), getattr(model, "task_embeddings", {})]
    own = {
        task: [
            *tower.trainable_variables,
            *[v for by_task in tables for table in by_task.get(task, {}).values() for v in table.trainable_variables],
        ]
        for task, tower in model.towers().items()
    }
    owned = {id(v) for variables in own.values() for v in variables}
    return [v for v in model.trainable_variables if id(v) not in owned], own


@pytest.mark.parametrize("name, task_features", [("ppnet", "[]"), ("pepnet", "[]"), ("pepnet", TASK_FEATURES)])
def test_primary_sharing_trains_the_shared_parts_by_the_first_task_alone(split_and_stats, name, task_features):
    """Under ``task_sharing = "primary"`` a later task's loss reaches only its own tables (id tables
    and those of ``model.task_features``) and tower, and the shared parts get exactly the first
    task's gradient: it learns as it would alone."""
    train_split, _, kinds = split_and_stats
    sets = [f"model.name={name}", *([] if name == "pepnet" else ["model.domain_features=[]"])]
    primary = ['model.task_sharing="primary"', f"model.task_features={task_features}"]
    config = multitask_config(*sets, *primary, "model.embedding_l2=0", "model.dropout=0")
    model = build_model(config, compute_stats(config, train_split, kinds))
    features, targets = batch(train_split, kinds, TASKS)
    model.forward(features)  # built
    shared, own = shared_and_own_variables(model)
    rng = np.random.default_rng(0)
    for variable in [v for task in TASKS[1:] for v in own[task]]:
        if not np.any(variable.numpy()):  # the gates' output layers start at zero: no gradient reaches the ids
            variable.assign(rng.normal(scale=0.1, size=variable.shape).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        total = model.compute_loss((features, targets), training=True)
        logits = model.forward(features, training=True).logits
        losses = {
            task: tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(targets[task], logits[task])) for task in TASKS
        }
    for task in TASKS[1:]:
        assert all(g is None for g in tape.gradient(losses[task], shared)), task
        gradients = tape.gradient(losses[task], own[task])
        assert all(float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) > 0 for g in gradients), task
    first = tape.gradient(losses[TASKS[0]], shared)
    for alone, joint in zip(first, tape.gradient(total, shared), strict=True):
        assert (alone is None) == (joint is None)
        if alone is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(joint), tf.convert_to_tensor(alone), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("sharing", ["joint", "primary"])
def test_a_task_that_builds_on_another_adds_its_stopped_logit(split_and_stats, sharing):
    """``builds_on``: long view's logit is its tower's plus a learned multiple (from 0) of click's,
    and long view's loss trains that multiple but never click's tower."""
    train_split, _, kinds = split_and_stats
    config = multitask_config(BUILDS_ON, f'model.task_sharing="{sharing}"', "model.dropout=0")
    model = build_model(config, compute_stats(config, train_split, kinds))
    features, targets = batch(train_split, kinds, TASKS)
    alone = model.forward(features).logits
    transfer = model.logit_transfers["long_view"]
    transfer.scale.assign(0.05)
    with tf.GradientTape() as tape:
        logits = model.forward(features, training=True).logits
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(targets["long_view"], logits["long_view"]))
    expected = alone["long_view"] + 0.05 * transfer.speedup * alone["is_click"]
    np.testing.assert_allclose(logits["long_view"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits["is_like"], alone["is_like"], rtol=1e-6)  # it builds on nothing
    click_tower = model.towers()["is_click"].trainable_variables
    gradients = tape.gradient(loss, [transfer.scale, *click_tower])
    assert float(gradients[0]) != 0
    assert all(g is None for g in gradients[1:])


def test_primary_sharing_exports_every_task_served_without_ppnet(split_and_stats, tmp_path):
    from ppnet.export import export_model

    train_split, valid_split, kinds = split_and_stats
    config = multitask_config(BUILDS_ON, 'model.task_sharing="primary"', f"model.task_features={TASK_FEATURES}")
    model = build_model(config, compute_stats(config, train_split, kinds))
    model.logit_transfers["long_view"].build(None)
    model.logit_transfers["long_view"].scale.assign(0.05)  # not the identity it starts as
    export = export_model(model, tmp_path / "export")
    _, rows = next(valid_split.batches(list(kinds), 200))
    arrays = to_arrays(rows, kinds)
    served = served_without_ppnet(export, arrays, tmp_path)
    logits = model.forward({k: tf.constant(v) for k, v in arrays.items()}).logits
    for task in TASKS:
        np.testing.assert_allclose(
            served[f"probability_{task}"], tf.sigmoid(logits[task]).numpy(), rtol=1e-5, atol=1e-6
        )
