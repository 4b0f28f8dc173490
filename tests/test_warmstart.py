"""``ppnet train --init-from``: a run continued on new data starts exactly where its parent stopped,
known ids keep their rows, new ids get new ones, and a config that would build another network is
refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from ppnet.cli import main
from ppnet.config import load_config
from ppnet.data.pipeline import iter_batches
from ppnet.data.schema import input_kinds
from ppnet.data.split import Split, make_splits
from ppnet.errors import PPNetError
from ppnet.evaluate import evaluate_export
from ppnet.model import build_model
from ppnet.replay import replay, replay_config
from ppnet.rundir import load_run, partial_dir, restore_best
from ppnet.stats import compute_stats
from ppnet.tf_private import adam_moments
from ppnet.train import train
from ppnet.warmstart import Parent, ParentCheckpoint, check_compatible, check_kinds, warm_start
from tests.helpers import DEFAULT_CONFIG, SMALL_OVERRIDES, multitask_config, small_config

# min_count 1: every id of the parent's training rows has a row of its own, so before any step the
# continued model scores those rows as the parent does (ids that reach min_count only with the new
# data get new rows: the parent scored them through the OOV row).
SETS = (
    "train.epochs=1",
    "train.precision=float32",
    *(f"features.{n}.min_count=1" for n in ("user_id", "video_id", "author_id")),
)


@pytest.fixture(scope="module")
def days(synthetic_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(the first five days, all eight days) of the synthetic log, as two directories."""
    root = tmp_path_factory.mktemp("days")
    files = sorted(synthetic_dir.glob("*.parquet"))
    (root / "early").mkdir()
    for file in files[:5]:
        shutil.copy(file, root / "early" / file.name)
    return root / "early", synthetic_dir


@pytest.fixture(scope="module")
def parent_run(days, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("parent") / "run"
    train(small_config(*SETS), str(days[0]), run)
    return run


def continued_model(parent_run: Path, data: Path, with_optimizer: bool = True):
    """The model ``--init-from parent_run`` starts from on ``data``, before its first step."""
    config = small_config(*SETS)
    train_split, _ = make_splits(config, data, None)
    kinds = input_kinds(config, list(train_split.files))
    parent = Parent.load(parent_run)
    stats = compute_stats(config, train_split, kinds, parent.stats)
    model = build_model(config, stats)
    warm_start(model, parent, with_optimizer)
    return model, parent


def test_a_continued_model_predicts_as_its_parent_before_any_step(parent_run, days):
    child, parent = continued_model(parent_run, days[1])
    old = load_run(parent_run)
    split, _ = make_splits(parent.config, days[0], None)
    features, _ = next(iter_batches(split, parent.stats.kinds, ["is_click"], 512))
    features = {k: tf.constant(v) for k, v in features.items()}
    np.testing.assert_allclose(child(features).numpy(), old(features).numpy(), rtol=1e-6, atol=1e-6)


def test_known_ids_keep_their_rows_and_moments_and_new_ids_get_new_rows(parent_run, days):
    child, parent = continued_model(parent_run, days[1])
    old = build_model(parent.config, parent.stats)
    old.optimizer.build(old.trainable_variables)
    restore_best(old, parent_run)
    known = parent.stats.vocabularies["user_id"]
    grown = child.stats.vocabularies["user_id"]
    assert grown[: len(known)] == known and len(grown) > len(known), "the vocabulary grows at its end"
    ids = tf.constant(known + grown[len(known) :], tf.int64)
    old_rows, new_rows = old.lookups["user_id"](ids).numpy(), child.lookups["user_id"](ids).numpy()
    assert (new_rows[: len(known)] == old_rows[: len(known)]).all(), "a known id keeps its row index"
    (old_table, old_span), (new_table, new_span) = old.table_rows("user_id"), child.table_rows("user_id")
    old_values, new_values = old_table.numpy()[old_span], new_table.numpy()[new_span]
    np.testing.assert_array_equal(new_values[new_rows[: len(known)]], old_values[old_rows[: len(known)]])
    assert not np.isin(new_values[new_rows[len(known) :]], old_values).all(), "new ids start from fresh rows"
    for old_moment, new_moment in zip(adam_moments(old.optimizer, old_table), adam_moments(child.optimizer, new_table)):
        np.testing.assert_array_equal(
            new_moment.numpy()[new_span][new_rows[: len(known)]], old_moment.numpy()[old_span][old_rows[: len(known)]]
        )
    kernel, old_kernel = child.tower.trainable_variables[-2], old.tower.trainable_variables[-2]  # the output layer's
    for old_moment, new_moment in zip(adam_moments(old.optimizer, old_kernel), adam_moments(child.optimizer, kernel)):
        np.testing.assert_array_equal(new_moment.numpy(), old_moment.numpy())
        assert np.abs(new_moment.numpy()).max() > 0, "a trained moment"
    assert int(child.optimizer.iterations) == int(old.optimizer.iterations) > 0


def test_a_parent_checkpoint_without_a_value_of_the_shape_expected_is_refused(parent_run, tmp_path):
    checkpoint = ParentCheckpoint(parent_run)
    key, shape = next((k, s) for k, s in checkpoint.shapes.items() if len(s) == 2)
    assert checkpoint.value(key, tuple(shape), "a kernel").shape == tuple(shape)
    with pytest.raises(PPNetError, match=r"has shape .* for a kernel \(written by another ppnet version"):
        checkpoint.value(key, (shape[0] + 1, shape[1]), "a kernel")
    with pytest.raises(PPNetError, match="has no value for a kernel"):
        checkpoint.value(None, tuple(shape), "a kernel")
    for name in ("metrics.json", "config.json", "stats.json"):  # a finished run's files, its checkpoint lost
        shutil.copy(parent_run / name, tmp_path / name)
    with pytest.raises(PPNetError, match="no best checkpoint"):
        Parent.load(tmp_path)


def test_weights_only_starts_a_fresh_optimizer(parent_run, days):
    child, _ = continued_model(parent_run, days[1], with_optimizer=False)
    assert int(child.optimizer.iterations) == 0


def test_min_count_counts_over_the_parent_data_and_the_new(synthetic_dir, tmp_path):
    config = small_config(
        "features.user_id.min_count=2", "features.video_id.min_count=1", "features.author_id.min_count=1"
    )
    base = pq.read_table(sorted(synthetic_dir.glob("*.parquet"))[0])

    def log(path: Path, users: list[int]) -> Split:
        table = base.slice(0, len(users)).set_column(
            base.schema.get_field_index("user_id"), "user_id", pa.array(users, pa.int64())
        )
        pq.write_table(table, path)
        return Split((path,), None, str(path))

    first = log(tmp_path / "a.parquet", [1, 1, 2, 3, 3, 3])
    kinds = input_kinds(config, list(first.files))
    parent = compute_stats(config, first, kinds)
    assert parent.vocabularies["user_id"] == [3, 1] and parent.pending["user_id"] == [[2, 1]]
    second = log(tmp_path / "b.parquet", [2, 4, 4, 5, 1, 1])
    child = compute_stats(config, second, kinds, parent)
    assert child.vocabularies["user_id"] == [3, 1, 2, 4], "kept in order; 2 (once before, once now) and 4 added"
    assert child.pending["user_id"] == [[5, 1]]
    assert child.numeric == parent.numeric, "the tower's inputs stay standardised as the parent's were"


def _fail(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("ppnet: error: ")]
    return line


@pytest.mark.parametrize(
    "change, key", [("model.hidden_units=[16]", "model.hidden_units"), ("features.user_id.dim=8", "features[0].dim")]
)
def test_a_config_that_builds_another_network_is_refused(parent_run, days, tmp_path, capsys, change, key):
    sets = [arg for item in [*SMALL_OVERRIDES, change] for arg in ("--set", item)]
    out = tmp_path / "child"
    args = ["train", "--config", DEFAULT_CONFIG, "--data", days[1], "--out", out, "--init-from", parent_run, *sets]
    message = _fail(capsys, args)
    assert key in message and str(parent_run) in message
    assert not out.exists() and not out.with_name("child.partial").exists()


def test_init_from_a_directory_that_is_not_a_finished_run_is_refused(days, tmp_path, capsys):
    args = ["train", "--config", DEFAULT_CONFIG, "--data", days[1], "--out", tmp_path / "c", "--init-from", tmp_path]
    assert "not a finished run directory" in _fail(capsys, args)


def test_a_continued_run_records_its_parent_and_serves_new_ids(parent_run, days, tmp_path):
    config = small_config(*SETS)
    metrics = train(config, str(days[1]), tmp_path / "child", init_from=parent_run)
    assert metrics["init_from"] == str(parent_run.resolve()) and metrics["init_optimizer"] is True
    stats = json.loads((tmp_path / "child" / "stats.json").read_text())
    parent_users = set(json.loads((parent_run / "stats.json").read_text())["vocabularies"]["user_id"])
    new_users = [u for u in stats["vocabularies"]["user_id"] if u not in parent_users]
    assert new_users, "the later days bring users the parent never saw"
    serve = tf.saved_model.load(str(tmp_path / "child" / "export" / "1")).signatures["serving_default"]
    split, _ = make_splits(config, days[1], None)
    features, _ = next(iter_batches(split, stats["kinds"], ["is_click"], 1))
    scores = {}
    for label, user in [("old", sorted(parent_users)[0]), ("new", new_users[0]), ("unseen", -12345)]:
        row = {k: tf.constant(v) for k, v in features.items()} | {"user_id": tf.constant([user], tf.int64)}
        scores[label] = float(serve(**row)["probability"][0])
    assert len(set(scores.values())) == 3, f"old, new and unseen ids each have their own row: {scores}"


def test_refit_trains_the_export_on_the_validation_rows_too(days, tmp_path, caplog):
    plain = train(small_config(*SETS), str(days[1]), tmp_path / "plain")
    refit = train(small_config(*SETS, "train.refit=true"), str(days[1]), tmp_path / "refit")
    assert "refit" not in plain and refit["refit"]["rows"] == plain["rows"]
    assert refit["auc"] == plain["auc"], "metrics.json scores the chosen epoch, before the refit pass"
    last_day = sorted(days[1].glob("*.parquet"))[-1]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ppnet.evaluate"):
        before = evaluate_export(tmp_path / "plain" / "export" / "1", last_day)
        assert [r for r in caplog.records if r.name == "ppnet.evaluate"] == []
        after = evaluate_export(tmp_path / "refit" / "export" / "1", last_day)
    assert after["logloss"] < before["logloss"], "the refit export has learned the validation day"
    [warning] = [r for r in caplog.records if r.name == "ppnet.evaluate"]
    assert f"{after['rows']} of the {after['rows']} rows scored" in warning.getMessage()
    assert "train.refit" in warning.getMessage()


def test_replay_scores_each_day_before_training_on_it(parent_run, days, tmp_path, capsys):
    later = sorted(days[1].glob("*.parquet"))[5:]  # the parent trained on the first four, validated on the fifth
    # train.refit as the KuaiRand config has it: a replay's day is one pass all the same.
    sets = [arg for item in [*SMALL_OVERRIDES, *SETS, "train.refit=true"] for arg in ("--set", item)]
    out = tmp_path / "replay"
    args = ["replay", "--config", DEFAULT_CONFIG, "--base", parent_run, "--days", *later, "--out", out, *sets]
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "replay.json").read_text())
    assert [row["day"] for row in report["days"]] == [str(day) for day in later]
    assert sorted(p.name for p in (out / "export").iterdir()) == ["1", "2", "3", "4"], (
        "one version per day, after the base"
    )
    for row, day in zip(report["days"], later, strict=True):
        meta = json.loads((out / "export" / row["export"] / "assets.extra" / "ppnet.json").read_text())
        trained_on = {Path(f).resolve() for f in meta["splits"]["train"]["files"]}
        assert day.resolve() not in trained_on, f"{day} was scored by a model that had trained on it"
    runs = sorted(run for run in (out / "runs").iterdir() if run.is_dir())
    assert runs and not any("refit" in json.loads((run / "metrics.json").read_text()) for run in runs)
    assert report["days"][1]["export"] == "2", "the second day is scored by the model continued on the first"
    assert report["mean"]["auc"] == pytest.approx(np.mean([row["auc"] for row in report["days"]]))
    assert all(row["train_seconds"] > 0 for row in report["days"]), "each day records its continuation's time"
    assert "mean" in printed and str(out / "replay.json") in printed


def test_a_replay_run_again_after_a_crash_resumes_at_the_day_it_stopped(parent_run, days, tmp_path, monkeypatch):
    later = sorted(days[1].glob("*.parquet"))[5:7]
    config, out = small_config(*SETS), tmp_path / "replay"
    trained, crash_at = [], [1]  # the days each call trained on; the call that is stopped

    def interrupted_fit(*args, **kwargs):
        raise KeyboardInterrupt

    def stoppable_train(config, data, run, **kwargs):
        if len(trained) in crash_at:  # the process is stopped while that day's run trains
            with monkeypatch.context() as patch:
                patch.setattr("ppnet.train.fit", interrupted_fit)
                train(config, data, run, **kwargs)
        trained.append(data)
        return train(config, data, run, **kwargs)

    monkeypatch.setattr("ppnet.replay.train", stoppable_train)
    with pytest.raises(KeyboardInterrupt):
        replay(config, parent_run, later, out)
    first = json.loads((out / "replay.json").read_text())
    assert not first["complete"] and [row["day"] for row in first["days"]] == [str(later[0])]
    assert partial_dir(out / "runs" / f"2-{later[1].stem}").is_dir(), "day 2's run was stopped part-way"

    crash_at.clear()
    monkeypatch.chdir(later[0].parent)  # resumed from another directory, with relative paths
    report = replay(config, parent_run, [Path(day.name) for day in later], out)
    assert trained == [str(later[0]), str(later[1])], "the recorded day is not trained again"
    assert report["complete"] and report["days"][0] == first["days"][0]
    assert [row.get("resumed", False) for row in report["days"]] == [False, True], "day 2's seconds are partial"
    assert [row["export"] for row in report["days"]] == ["1", "2"], "day 2 is scored by the model after day 1"
    assert sorted(p.name for p in (out / "export").iterdir()) == ["1", "2", "3"]
    assert json.loads((out / "replay.json").read_text()) == report
    assert replay(config, parent_run, later, out) == report and len(trained) == 2, "a finished replay stays as it is"
    extended = sorted(days[1].glob("*.parquet"))[5:8]  # tomorrow's day added
    report = replay(config, parent_run, extended, out)
    assert trained[2:] == [str(extended[2])] and report["days"][2]["export"] == "3" and report["complete"]


@pytest.mark.parametrize(
    "change, reason",
    [
        ("base", "its base is"),
        ("config", "its config differs at train.learning_rate"),
        ("days", "its days begin"),
        ("damaged", "not a replay report ppnet wrote"),
    ],
)
def test_a_replay_directory_of_other_arguments_is_refused(parent_run, days, tmp_path, change, reason):
    later = sorted(days[1].glob("*.parquet"))[5:7]
    config, out = small_config(*SETS), tmp_path / "replay"
    recorded = {"base": str(parent_run.resolve()), "config": replay_config(config).to_dict(), "days": []}
    if change == "base":
        recorded["base"] = str(tmp_path / "another-run")
    if change == "config":
        recorded["config"]["train"]["learning_rate"] = 0.5
    if change == "days":
        scores = {"auc": 0.6, "gauc": 0.6, "logloss": 0.6, "rows": 10}
        recorded["days"] = [{"day": str(later[1]), "run": "1-x", **scores}]
    if change == "damaged":  # edited by hand
        del recorded["days"]
    out.mkdir()
    (out / "replay.json").write_text(json.dumps({**recorded, "complete": False}))
    with pytest.raises(PPNetError, match=reason):
        replay(config, parent_run, later, out)
    (out / "replay.json").unlink()
    (out / "notes.txt").write_text("someone else's")
    with pytest.raises(PPNetError, match="is not a replay directory"):
        replay(config, parent_run, later, out)


def test_a_column_of_another_type_than_the_parents_is_refused(parent_run):
    parent = Parent.load(parent_run)
    kinds = {**parent.stats.kinds, "user_id": "string"}
    with pytest.raises(PPNetError, match="column 'user_id' is string in this data, int64 in the parent run's"):
        check_kinds(parent, kinds)
    check_kinds(parent, parent.stats.kinds)  # the same kinds pass


def test_replay_never_scores_a_day_with_a_model_trained_on_it(days, tmp_path):
    """A feature that gives the label away with tokens of its own each day: one pass over a day
    learns that day's two tokens, and scores the day near AUC 1; a model that has not trained on
    the day sees unknown tokens and scores it as the model without the leak would."""
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    for i, file in enumerate(sorted(days[1].glob("*.parquet"))):
        table = pq.read_table(file)
        leak = 2 * i + table["is_click"].to_numpy()  # the day's "no click" and "click" tokens
        pq.write_table(table.append_column("leak", pa.array(leak)), leaky / file.name)
    config = tmp_path / "leaky.toml"
    config.write_text(DEFAULT_CONFIG.read_text() + '\n[[features]]\nname = "leak"\nmin_count = 1\ndim = 4\n')
    sets = [*SMALL_OVERRIDES, *SETS, "train.learning_rate=0.01"]
    files = sorted(leaky.glob("*.parquet"))
    base_data = tmp_path / "base-data"
    base_data.mkdir()
    for file in files[:4]:
        (base_data / file.name).symlink_to(file)
    base = tmp_path / "base"
    train(load_config(config, sets), str(base_data), base)
    report = replay(load_config(config, sets), base, files[4:7], tmp_path / "replay")
    runs = sorted(run for run in (tmp_path / "replay" / "runs").iterdir() if run.is_dir())
    trained_on_the_day = [evaluate_export(run / "export" / "1", day)["auc"] for run, day in zip(runs, files[4:7])]
    scored_before = [day["auc"] for day in report["days"]]
    assert min(trained_on_the_day) > 0.9, "one pass learns the day's tokens: a model trained on a day would show"
    assert max(scored_before) < 0.8, "every day is scored by a model that has not trained on it"


def test_a_task_that_builds_on_another_where_the_parent_did_not_is_refused(tmp_path):
    """``builds_on`` adds a variable: a parent without it cannot be continued with it."""
    parent = Parent(tmp_path, multitask_config(), stats=None)
    child = multitask_config('tasks.long_view.builds_on="is_click"')
    with pytest.raises(PPNetError, match=r"tasks\[1\]\.builds_on differs from the parent run's \(''"):
        check_compatible(parent, child)
    check_compatible(parent, multitask_config("train.learning_rate=0.01"))  # a free key is accepted
