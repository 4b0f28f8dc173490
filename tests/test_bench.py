"""The benchmark: the smoke run writes one JSON with every section, and the FLOPs counted in the built
model's traced graphs are those its Dense layers compute."""

import itertools
import json
import math

import numpy as np
import pytest

from tests.helpers import small_config

VARIANTS = {"ppnet", "ppnet_bf16", "ppnet_tower_ids", "ppnet_ids", "dnn", "logreg"}
BATCHES = {"1", "64", "256", "1024"}
PRECISIONS = ["float32", "mixed_bfloat16"]
MODEL_MODES = [
    ["model.name=dnn"],
    ["model.gate_stop_gradient=shared"],
    ["model.gate_stop_gradient=ids"],
    ["model.personal_ids_in_tower=false"],
]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(the JSON written by ``python -m bench --smoke``, the markdown it printed)."""
    import contextlib
    import io

    from bench.__main__ import main

    results = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        path = main(["--smoke", "--results", str(results)])
    assert path.parent == results and [p.name for p in results.iterdir()] == [path.name]
    return json.loads(path.read_text()), printed.getvalue()


def test_machine_and_versions(smoke):
    result, _ = smoke
    machine, versions = result["machine"], result["versions"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["memory_bytes"] > 0
    for peak in ("matmul_peak_flops_per_sec", "bf16_matmul_peak_flops_per_sec"):
        assert finite(machine[peak]) and machine[peak] > 1e8, peak
    for package in ("python", "tensorflow", "tf-keras", "tensorflow-recommenders", "pyarrow"):
        assert versions[package]
    assert list(result["logs"]) == ["synthetic"] and result["args"]["smoke"] is True


def test_the_json_says_what_auto_picks_here_and_why(smoke):
    from ppnet.precision import BFLOAT16, choose

    auto, chosen = smoke[0]["machine"]["precision_auto"], choose("auto")
    assert auto == {"policy": chosen.policy, "why": chosen.reason, "bf16_native": chosen.policy == BFLOAT16}
    assert smoke[0]["logs"]["synthetic"]["speed"]["bf16_emulated"] is not auto["bf16_native"]


def test_quality(smoke):
    log = smoke[0]["logs"]["synthetic"]
    assert set(log["quality"]) == VARIANTS and log["config"]["model"]["hidden_units"] == [16]
    assert set(log["variant_sets"]) == VARIANTS - {"logreg"}
    for variant, summary in log["quality"].items():
        assert len(summary["runs"]) == 1, variant
        assert 0.5 < summary["auc"]["mean"] <= 1.0, variant
        assert 0.0 <= summary["gauc"]["mean"] <= 1.0, variant
        assert 0.0 < summary["logloss"]["mean"] < 1.0, variant
        assert all(finite(summary[key]["std"]) for key in ("auc", "gauc", "logloss"))


def test_speed_of_both_precisions(smoke):
    log = smoke[0]["logs"]["synthetic"]
    speed, flat = log["speed"], {k: v for k, v in log["speed"].items() if k not in ("training", "bf16_emulated")}
    assert all(finite(value) and value > 0 for value in flat.values()), speed
    forward, train = speed["forward_flops_per_example"], speed["train_flops_per_example"]
    assert forward < train <= 3 * forward
    assert list(speed["training"]) == PRECISIONS
    for policy, run in speed["training"].items():
        assert all(finite(value) and value > 0 for value in run.values()), policy
        assert run["flops_per_sec"] == train * run["examples_per_sec"]
        assert run["utilisation_of_float32_peak"] == run["flops_per_sec"] / speed["matmul_peak_flops_per_sec"]
        assert run["utilisation_of_bf16_peak"] == run["flops_per_sec"] / speed["bf16_matmul_peak_flops_per_sec"]
        assert 0 < run["utilisation_of_float32_peak"] < 1
    rates = [speed["training"][policy]["examples_per_sec"] for policy in PRECISIONS]
    assert speed["bf16_speedup"] == rates[1] / rates[0]
    # the timed runs are the quality runs of their variant's first seed, at the precision they name
    for policy, variant in (("float32", "ppnet"), ("mixed_bfloat16", "ppnet_bf16")):
        assert f"train.precision={policy}" in log["variant_sets"][variant]


def test_the_peaks_are_the_best_measured_so_far(smoke):
    result = smoke[0]
    for key in ("matmul_peak_flops_per_sec", "bf16_matmul_peak_flops_per_sec"):
        assert result["machine"][key] == result["logs"]["synthetic"]["speed"][key]


def test_memory(smoke):
    memory = smoke[0]["logs"]["synthetic"]["memory"]
    assert memory["peak_rss_1x_bytes"] > 50 * 2**20 and memory["peak_rss_4x_bytes"] > 50 * 2**20
    assert memory["train_rows_4x"] == 4 * memory["train_rows_1x"]
    assert finite(memory["ratio_4x_1x"]) and memory["ratio_4x_1x"] > 0
    assert memory["peak_rss_1x_bf16_bytes"] > 50 * 2**20


def test_serving(smoke):
    serving = smoke[0]["logs"]["synthetic"]["serving"]
    assert serving["export_bytes"] > 0
    assert serving["ppnet_imported"] is False and serving["tf_use_legacy_keras"] is None
    assert serving["tf_enable_onednn_opts"] == "1" and serving["onednn_off"]["tf_enable_onednn_opts"] == "0"
    for runs, model in itertools.product(
        (serving, serving["onednn_off"]), ("model", "model_examples", "trivial", "trivial_columns", "tower")
    ):
        assert set(runs[model]) == BATCHES
        for batch, timing in runs[model].items():
            assert timing["rows"] == int(batch)
            assert 0 < timing["p50_ms"] <= timing["p99_ms"] and finite(timing["p99_ms"])
            assert finite(timing["rows_per_sec"]) and timing["rows_per_sec"] > 0


def test_serving_ranking_requests(smoke):
    log = smoke[0]["logs"]["synthetic"]
    serving, kinds = log["serving"], [f["name"] for f in log["config"]["features"]]
    columns = serving["request_columns"]
    assert columns["user"][0] == "user_id" and sorted(columns["user"] + columns["candidate"]) == sorted(kinds)
    assert {"video_id", "author_id", "tab"} <= set(columns["candidate"])
    bound = serving["flop_bound"]
    assert bound["forward_flops_per_row"] == log["speed"]["forward_flops_per_example"]
    assert bound["peak_flops_per_sec"] == serving["matmul_peak_flops_per_sec"]
    for runs in (serving, serving["onednn_off"]):
        assert list(runs["requests"]) == ["serve_examples", "serving_default"]
        peak = runs["matmul_peak_flops_per_sec"]  # each worker's own: its threads and kernels are the requests'
        assert finite(peak) and peak > 0
        for signature, sizes in runs["requests"].items():
            assert set(sizes) == BATCHES, signature
            for n, figures in sizes.items():
                assert all(finite(value) and value > 0 for value in figures.values()), (signature, n)
                assert figures["tower_p50_ms"] == runs["tower"][n]["p50_ms"]
                assert figures["flop_bound_ms"] == pytest.approx(1e3 * int(n) * bound["forward_flops_per_row"] / peak)


def test_markdown_has_one_section_per_measure(smoke):
    _, printed = smoke
    for heading in (
        "### Quality",
        "### Training speed",
        "### Training by precision",
        "### Memory",
        "### Serving ranking requests",
        "### Serving: the export",
        "### Daily retraining",
        "### A day's continuation against a retrain",
    ):
        assert heading in printed
    assert '`train.precision = "auto"` picks' in printed


def test_replay_scores_the_last_day_three_ways_and_times_a_continuation(smoke):
    section = smoke[0]["logs"]["synthetic"]["replay"]
    assert len(section["days"]) == 1 and len(section["runs"]) == 1  # smoke: one day, one seed
    assert set(section["summary"]) == {"base", "continued", "scratch"}
    for model, figures in section["summary"].items():
        assert 0.5 < figures["auc"]["mean"] <= 1.0 and figures["logloss"]["mean"] > 0, model
    times = section["seconds"]
    assert times["continue_seconds"]["mean"] > 0 and times["scratch_seconds"]["mean"] > 0
    assert times["ratio"] == pytest.approx(times["continue_seconds"]["mean"] / times["scratch_seconds"]["mean"])


def built_model(config, synthetic_dir):
    from ppnet.data.schema import input_kinds
    from ppnet.data.split import make_splits
    from ppnet.model import build_model
    from ppnet.stats import compute_stats

    train_split, _ = make_splits(config, synthetic_dir, None)
    return build_model(config, compute_stats(config, train_split, input_kinds(config, list(train_split.files))))


@pytest.fixture(scope="module", params=MODEL_MODES, ids=lambda overrides: overrides[0])
def counted(request, synthetic_dir):
    """(config, built model, its counted FLOPs per example) of one model mode."""
    from bench.speed import flops_per_example

    config = small_config(*request.param)
    model = built_model(config, synthetic_dir)
    return config, model, flops_per_example(model)


def test_forward_flops_are_twice_the_tower_kernels(counted):
    """2 * in * out per Dense is 2 * (kernel size) summed over the tower's and the gates' kernels."""
    _, model, flops = counted
    kernels = [w for w in model.tower.trainable_weights if "kernel" in w.name]
    assert flops["forward"] == sum(2 * int(np.prod(w.shape)) for w in kernels)


def test_train_flops_skip_only_the_gates_input_gradient_of_the_stopped_tower_input(counted):
    """3x forward, less ``2 * width * hidden`` per gate when the gates read a stop_gradient copy
    of the tower's input (width read off the built tower's first kernel)."""
    config, model, flops = counted
    shared = model.gated and config.model.gate_stop_gradient == "shared"
    width, gates = model.tower.dense[0].kernel.shape[0], len(model.tower.dense)
    skipped = 2 * width * config.model.gate_hidden * gates if shared else 0
    assert flops["train"] == 3 * flops["forward"] - skipped


def test_graph_flops_count_products_in_called_functions_and_gradients():
    """2 * m * k * n per product, transposed and batched ones too, inside a nested ``tf.function``
    and its gradient function; per example, a whole count only when it is one."""
    import tensorflow as tf

    from bench.speed import graph_flops, per_example

    kernel = tf.Variable(tf.ones([8, 4]))
    inner = tf.function(lambda x: tf.matmul(x, kernel))

    def step(x):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(inner(x)) + tf.reduce_sum(tf.linalg.matmul(x[None], x[None], transpose_b=True))
        return tape.gradient(y, kernel)

    x = tf.ones([3, 8])
    assert graph_flops(inner, x) == 2 * 3 * 8 * 4
    # x @ kernel forward, and its gradient function's two products; x x^T (batched, [1, 3, 3]) forward only
    assert graph_flops(step, x) == 3 * (2 * 3 * 8 * 4) + 2 * 3 * 8 * 3
    assert per_example(96, 16) == 6 and isinstance(per_example(96, 16), int) and per_example(10, 4) == 2.5


def test_the_dnn_baseline_gets_its_own_tuning_and_the_user_set_wins() -> None:
    from pathlib import Path

    from bench.harness import CONFIGS
    from bench.quality import BASELINE_TUNING, variant_sets
    from ppnet.config import load_config

    kuairand = CONFIGS / "kuairand.toml"
    dropout = {
        variant: load_config(kuairand, variant_sets(kuairand, variant, [], 42)).model.dropout
        for variant in ("ppnet", "dnn")
    }
    assert dropout == {"ppnet": 0.0, "dnn": 0.2} and "kuairand.toml" in BASELINE_TUNING
    user = load_config(kuairand, variant_sets(kuairand, "dnn", ["model.dropout=0.3"], 42))
    assert user.model.dropout == 0.3 and user.model.name == "dnn" and user.train.seed == 42
    assert variant_sets(Path("other.toml"), "dnn", [], 1) == [
        "model.name=dnn",
        "train.precision=float32",
        "train.seed=1",
    ]


# --- the multi-task leaderboard -------------------------------------------------------------------

MULTITASK_MODELS = ["ppnet_single_task", "dnn", "mmoe", "ppnet", "pepnet", "pepnet_joint"]
TASKS = ["is_click", "long_view", "is_like"]


def test_multitask_leaderboard_scores_every_task_of_every_model(smoke):
    board = smoke[0]["logs"]["synthetic"]["multitask"]
    assert board["tasks"] == TASKS and board["config_path"].endswith("multitask.toml")
    assert list(board["quality"]) == TASKS
    for task, models in board["quality"].items():
        assert list(models) == MULTITASK_MODELS, task
        for model, summary in models.items():
            assert [run["seed"] for run in summary["runs"]] == board["seeds"], (task, model)
            assert 0.0 <= summary["auc"]["mean"] <= 1.0 and 0.0 < summary["logloss"]["mean"] < 1.0, (task, model)
    # a single-task run is scored on its own label only; a multi-task run on every task
    for run in board["runs"]:
        labels = [s.split("=", 1)[1] for s in run["sets"] if s.startswith("data.label=")]
        assert list(run["tasks"]) == (labels if run["model"] == "ppnet_single_task" else TASKS), run["sets"]
    assert len(board["runs"]) == len(board["seeds"]) * (len(TASKS) + len(MULTITASK_MODELS) - 1)
    assert all(1 <= run["best_epoch"] <= run["epochs_run"] == 1 for run in board["runs"])  # smoke: 1 epoch
    assert list(board["speed"]) == MULTITASK_MODELS
    assert board["speed"]["ppnet_single_task"]["vs_single_task"] == 1.0
    for model, figures in board["speed"].items():
        assert finite(figures["examples_per_sec"]["mean"]) and figures["examples_per_sec"]["mean"] > 0, model
        assert finite(figures["vs_single_task"]) and figures["vs_single_task"] > 0, model


def test_markdown_has_the_multitask_leaderboard(smoke):
    _, printed = smoke
    rows = [line for line in printed.splitlines() if line.startswith(tuple(f"| {task} |" for task in TASKS))]
    assert "### Multi-task leaderboard" in printed and "### Multi-task training speed" in printed
    assert len(rows) == len(TASKS) * len(MULTITASK_MODELS)


def test_multitask_plan_runs_every_model_per_seed_with_valid_configs():
    from bench.harness import CONFIGS
    from bench.multitask import SINGLE, UNBUILT, multitask_config, plan
    from ppnet.config import load_config

    single = CONFIGS / "kuairand.toml"
    multi = multitask_config(single)
    assert multi == CONFIGS / "kuairand_multitask.toml" and multitask_config(CONFIGS / "other.toml") is None
    entries = plan(single, multi, ["train.epochs=1", 'tasks.long_view.builds_on="is_click"'], [7, 8])
    models = [SINGLE] * 3 + MULTITASK_MODELS[1:] + [UNBUILT]  # where a task builds on another: without it too
    assert [(model, sets[-1]) for model, _, sets in entries] == [
        (model, f"train.seed={seed}") for seed in (7, 8) for model in models
    ]
    configs = {(model, load_config(path, sets).data.label): load_config(path, sets) for model, path, sets in entries}
    for (model, label), config in configs.items():
        name = {SINGLE: "ppnet", "pepnet_joint": "pepnet", UNBUILT: "pepnet"}.get(model, model)
        builds_on = {task.name: task.builds_on for task in config.tasks if task.builds_on}
        assert builds_on == ({} if model in (SINGLE, UNBUILT) else {"long_view": "is_click"}), model
        assert config.train.epochs == 1 and config.model.name == name
        assert not config.train.refit, "the leaderboard scores the chosen epoch: no pass over the validation day"
        assert config.task_names == ([label] if model == SINGLE else TASKS), model
        assert config.model.domain_features == (["tab"] if name == "pepnet" else []), model
        # the paper's baselines (and pepnet_joint) let every task train the shared parts
        joint = model in ("dnn", "mmoe", "pepnet_joint") or model == SINGLE
        assert (config.model.task_sharing == "joint") == joint, model
    assert {label for model, label in configs if model == SINGLE} == set(TASKS)


def fake_run(model: str, seed: int, speed: float | None, **aucs: float) -> dict:
    """A leaderboard run with the given AUC per task (gauc = auc - 0.1, logloss = 1 - auc)."""
    tasks = {task: {"auc": auc, "gauc": auc - 0.1, "logloss": 1 - auc} for task, auc in aucs.items()}
    return {"model": model, "seed": seed, "sets": [], "examples_per_sec": speed, "tasks": tasks}


FAKE_RUNS = [
    fake_run("ppnet_single_task", 1, 100.0, a=0.6),
    fake_run("ppnet_single_task", 1, 300.0, b=0.7),
    fake_run("pepnet", 1, 50.0, a=0.62, b=0.75),
    fake_run("ppnet_single_task", 2, 200.0, a=0.64),
    fake_run("ppnet_single_task", 2, None, b=0.7),
    fake_run("pepnet", 2, 150.0, a=0.66, b=0.65),
]


def test_multitask_summary_is_per_task_and_model_over_seeds():
    from bench.multitask import summarise

    summary = summarise(FAKE_RUNS, ["a", "b"])
    assert list(summary) == ["a", "b"] and list(summary["a"]) == ["ppnet_single_task", "pepnet"]
    single_a, pepnet_b = summary["a"]["ppnet_single_task"], summary["b"]["pepnet"]
    assert [run["seed"] for run in single_a["runs"]] == [1, 2]
    assert single_a["auc"]["mean"] == pytest.approx(0.62) and single_a["auc"]["std"] == pytest.approx(0.02)
    assert single_a["gauc"]["mean"] == pytest.approx(0.52) and single_a["logloss"]["mean"] == pytest.approx(0.38)
    assert pepnet_b["auc"]["mean"] == pytest.approx(0.70) and pepnet_b["auc"]["std"] == pytest.approx(0.05)
    assert summary["b"]["ppnet_single_task"]["auc"]["std"] == 0.0


def test_multitask_speeds_pool_the_single_task_runs_and_skip_untimed_ones():
    from bench.multitask import speeds

    figures = speeds(FAKE_RUNS)
    single, pepnet = figures["ppnet_single_task"], figures["pepnet"]
    assert len(single["runs"]) == 3 and single["examples_per_sec"]["mean"] == pytest.approx(200.0)
    assert pepnet["examples_per_sec"]["mean"] == pytest.approx(100.0) and pepnet["vs_single_task"] == pytest.approx(0.5)
    assert single["vs_single_task"] == 1.0
    assert speeds([fake_run("pepnet", 1, 50.0, a=0.6)])["pepnet"]["vs_single_task"] is None


def test_multitask_table_has_a_row_per_task_and_model_and_a_speed_row_per_model():
    from bench.multitask import speeds, summarise
    from bench.report import multitask_table

    board = {"seeds": [1, 2], "quality": summarise(FAKE_RUNS, ["a", "b"]), "speed": speeds(FAKE_RUNS)}
    lines = list(multitask_table(board))
    assert "| a | ppnet_single_task | 0.6200 ± 0.0200 | 0.5200 ± 0.0200 | 0.3800 ± 0.0200 |" in lines
    assert "| b | pepnet | 0.7000 ± 0.0500 | 0.6000 ± 0.0500 | 0.3000 ± 0.0500 |" in lines
    assert "| pepnet | 100 ± 50 | 0.50 |" in lines and "| ppnet_single_task | 200 ± 82 | 1.00 |" in lines
    assert "2 seeds" in next(line for line in lines if line.startswith("### Multi-task leaderboard"))


def test_only_multitask_reports_that_section_alone():
    from bench.__main__ import parser
    from bench.multitask import speeds, summarise
    from bench.report import markdown

    assert parser().parse_args(["--only", "multitask"]).only == "multitask"
    with pytest.raises(SystemExit):
        parser().parse_args(["--only", "serving"])
    board = {"seeds": [1], "quality": summarise(FAKE_RUNS, ["a"]), "speed": speeds(FAKE_RUNS)}
    machine = {"cpu": "cpu", "cores": 2, "memory_bytes": 2**30, "matmul_peak_flops_per_sec": 1e9}
    result = {"timestamp": "t", "machine": machine, "versions": {"tensorflow": "2"}}
    printed = markdown({**result, "logs": {"log": {"data": "d", "multitask": board}}})
    assert "### Multi-task leaderboard" in printed and "### Quality" not in printed and "### Serving" not in printed
    assert "### Multi-task" not in markdown({**result, "logs": {"log": {"data": "d", "multitask": None}}})


def test_a_smoke_run_keeps_its_json_out_of_git_and_a_full_run_in_bench_results():
    import subprocess

    from bench import harness
    from bench.__main__ import parser, results_dir
    from tests.helpers import REPO

    smoke_dir = results_dir(parser().parse_args(["--smoke"]))
    ignored = subprocess.run(["git", "check-ignore", "-q", str(smoke_dir / "x.json")], cwd=REPO)
    assert ignored.returncode == 0, f"{smoke_dir} is not ignored by git"
    assert results_dir(parser().parse_args([])) == harness.RESULTS


# --- precisions and ranking requests, without timing -------------------------------------------


def test_a_bfloat16_model_counts_the_same_flops(synthetic_dir):
    """One FLOP count serves both precisions: bfloat16 casts, it adds or drops no product."""
    from bench.speed import flops_per_example
    from ppnet.model import build_model
    from ppnet.precision import BFLOAT16

    config = small_config()
    float32 = built_model(config, synthetic_dir)
    bfloat16 = build_model(config, float32.stats, precision=BFLOAT16)
    assert flops_per_example(bfloat16) == flops_per_example(float32)


def test_every_variant_but_the_timed_first_seeds_trains_in_process():
    from bench.__main__ import untimed_pairs
    from bench.quality import TIMED, VARIANTS

    pairs = untimed_pairs([7, 8])
    assert set(TIMED.values()) == {"ppnet", "ppnet_bf16"} and set(TIMED.values()) <= set(VARIANTS)
    assert ("ppnet", 7) not in pairs and ("ppnet_bf16", 7) not in pairs
    assert len(pairs) == 2 * len(VARIANTS) - 2 and ("ppnet_bf16", 8) in pairs and ("dnn", 7) in pairs


def test_skip_takes_the_long_sections_and_nothing_else():
    from bench.__main__ import parser

    assert parser().parse_args(["--skip", "replay", "--skip", "multitask"]).skip == ["replay", "multitask"]
    assert parser().parse_args([]).skip == []
    with pytest.raises(SystemExit):
        parser().parse_args(["--skip", "serving"])


def test_user_side_columns_are_those_constant_within_every_user_with_two_rows():
    from bench.serving import user_side_columns

    columns = {
        "user_id": np.array([1, 1, 2, 2, 3]),
        "age": np.array([20.0, 20.0, np.nan, np.nan, 50.0]),  # NaN is a value: constant for user 2
        "video": np.array(["a", "b", "c", "c", "d"]),  # varies for user 1
        "tab": np.array([0, 0, 1, 2, 3]),  # varies for user 2
        "app": np.array([1, 1, 1, 1, 1]),  # constant everywhere: counts as the user's, changing nothing
    }
    assert user_side_columns(columns, "user_id") == ["user_id", "age", "app"]
    assert user_side_columns(columns, "missing") == []


def test_a_ranking_request_shares_the_first_rows_user_columns_and_varies_the_rest():
    from bench.serving import ranking_request

    columns = {"user_id": np.array([1, 2, 3]), "age": np.array([20.0, 30.0, 40.0]), "video": np.array(["a", "b", "c"])}
    request = ranking_request(columns, ["user_id", "age"], 5)
    assert request["user_id"].tolist() == [1] * 5 and request["age"].tolist() == [20.0] * 5
    assert request["video"].tolist() == ["a", "b", "c", "a", "b"]


def test_request_figures_set_the_latency_beside_the_tower_and_the_flop_bound():
    from bench.serving import request_figures

    def timing(rows: int, p50: float) -> dict:
        return {"rows": rows, "repeats": 1, "p50_ms": p50, "p99_ms": 2 * p50, "rows_per_sec": 1e3 * rows / p50}

    runs = {
        "model_examples": {"1": timing(1, 2.0), "1024": timing(1024, 20.0)},
        "model": {"1": timing(1, 4.0), "1024": timing(1024, 40.0)},
        "tower": {"1": timing(1, 1.0), "1024": timing(1024, 10.0)},
    }
    figures = request_figures(runs, forward_flops=1e6, peak_flops=1e11)  # the bound: 1e5 rows/sec
    assert list(figures) == ["serve_examples", "serving_default"]
    examples = figures["serve_examples"]["1024"]
    assert examples["p50_ms"] == 20.0 and examples["p99_ms"] == 40.0 and examples["tower_p50_ms"] == 10.0
    assert examples["p50_vs_tower"] == pytest.approx(2.0) and examples["flop_bound_ms"] == pytest.approx(10.24)
    assert examples["of_flop_bound"] == pytest.approx(0.512)  # 51,200 rows/sec of 100,000
    assert figures["serving_default"]["1"]["p50_vs_tower"] == pytest.approx(4.0)


def test_the_report_says_when_bfloat16_is_emulated():
    from bench.report import precision_table, speed_table

    run = {"examples_per_sec": 100.0, "flops_per_sec": 1e9, "utilisation_of_float32_peak": 0.5}
    speed = {
        "input_examples_per_sec": 1e3,
        "train_flops_per_example": 10,
        "matmul_peak_flops_per_sec": 2e9,
        "bf16_matmul_peak_flops_per_sec": 1e9,
        "training": {
            "float32": {**run, "utilisation_of_bf16_peak": 1.0},
            "mixed_bfloat16": {**run, "examples_per_sec": 50.0, "utilisation_of_bf16_peak": 0.5},
        },
        "bf16_emulated": True,
    }
    scores = {key: {"mean": 0.5, "std": 0.0} for key in ("auc", "gauc", "logloss")}
    log = {"speed": speed, "quality": {"ppnet": scores, "ppnet_bf16": scores}}
    lines = [*speed_table(speed), *precision_table(log)]
    assert "### Training by precision (ppnet, bfloat16 emulated on this CPU)" in lines
    assert any(line.startswith("| bfloat16 matmul peak GFLOP/s (emulated") for line in lines)
    assert any(
        line.startswith("| mixed_bfloat16 | 50 | 0.50 | 1.0 | 50.0% | 50.0% | 0.5000 ± 0.0000") for line in lines
    )
    native = [*precision_table({**log, "speed": {**speed, "bf16_emulated": False}})]
    assert not any("emulated" in line for line in native)


def test_the_user_once_tower_computes_the_models_logits(synthetic_dir):
    """The experiment's hand-written tower, with and without the user's share of the gates' first
    matmul taken from one row, gives the model's own frozen logits (weights randomised, so that the
    gates are not the untrained 1; inputs random, shaped as the model's)."""
    from bench.serving import FrozenTower
    from bench.user_once import HandTower, logits_of, tower_weights, user_dims
    from ppnet.model import dummy_batch

    model = built_model(small_config(), synthetic_dir)
    rng = np.random.default_rng(0)
    for weight in model.tower.weights:
        weight.assign(rng.normal(0.0, 0.3, weight.shape).astype(np.float32))
    example = model.tower_inputs(dummy_batch(model.stats))
    parts = [rng.normal(size=[32, x.shape[-1]]).astype(np.float32) for x in [example.tower, *example.gate_parts]]
    parts[1][:, [0, 5]] = parts[1][:1, [0, 5]]  # dims every row shares: the "user's"
    gate = np.concatenate(parts[1:], axis=-1)
    mask = user_dims(gate)
    assert mask.sum() == 2 and mask[[0, 5]].all()
    expected = logits_of(FrozenTower(model, parts).serve, {f"x{i}": x for i, x in enumerate(parts)})
    weights, x = tower_weights(model), parts[0]
    all_rows = logits_of(HandTower(weights).serve, {"x": x, "gate": gate, "user": np.zeros([1, 0], np.float32)})
    once = logits_of(HandTower(weights, mask).serve, {"x": x, "gate": gate[:, ~mask], "user": gate[:1, mask]})
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(all_rows, expected, atol=1e-4)
    np.testing.assert_allclose(once, expected, atol=1e-4)


def test_the_replay_bench_alone_refuses_a_log_with_too_few_days(synthetic_dir, tmp_path):
    from bench.replay import main
    from tests.helpers import DEFAULT_CONFIG

    days = len(list(synthetic_dir.glob("*.parquet")))
    args = ["--data", str(synthetic_dir), "--config", str(DEFAULT_CONFIG), "--days", str(days - 1)]
    with pytest.raises(SystemExit, match=f"fewer than {days + 1} day files"):
        main([*args, "--results", str(tmp_path)])
    assert not list(tmp_path.glob("replay-*.json")), "nothing is written"
