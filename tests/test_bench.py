"""The benchmark: the smoke run writes one JSON with every section, and the analytic FLOPs are exact."""

import itertools
import json
import math

import numpy as np
import pytest

from tests.helpers import small_config

VARIANTS = {"ppnet", "ppnet_tower_ids", "ppnet_ids", "dnn", "logreg"}
BATCHES = {"1", "64", "1024"}
MODEL_MODES = [["model.name=dnn"], ["model.gate_stop_gradient=shared"], ["model.gate_stop_gradient=ids"],
               ["model.personal_ids_in_tower=false"]]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(the JSON written by ``python -m ppnet.bench --smoke``, the markdown it printed)."""
    import contextlib
    import io

    from ppnet.bench import main

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
    assert finite(machine["matmul_peak_flops_per_sec"]) and machine["matmul_peak_flops_per_sec"] > 1e8
    for package in ("python", "tensorflow", "tf-keras", "tensorflow-recommenders", "pyarrow"):
        assert versions[package]
    assert list(result["logs"]) == ["synthetic"] and result["args"]["smoke"] is True


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


def test_speed(smoke):
    speed = smoke[0]["logs"]["synthetic"]["speed"]
    assert all(finite(value) and value > 0 for value in speed.values()), speed
    forward = speed["forward_flops_per_example"]
    assert forward < speed["train_flops_per_example"] <= 3 * forward
    assert speed["train_flops_per_sec"] == speed["train_flops_per_example"] * speed["train_examples_per_sec"]
    assert 0 < speed["flop_utilisation"] < 1


def test_memory(smoke):
    memory = smoke[0]["logs"]["synthetic"]["memory"]
    assert memory["peak_rss_1x_bytes"] > 50 * 2 ** 20 and memory["peak_rss_4x_bytes"] > 50 * 2 ** 20
    assert memory["train_rows_4x"] == 4 * memory["train_rows_1x"]
    assert finite(memory["ratio_4x_1x"]) and memory["ratio_4x_1x"] > 0


def test_serving(smoke):
    serving = smoke[0]["logs"]["synthetic"]["serving"]
    assert serving["export_bytes"] > 0
    assert serving["ppnet_imported"] is False and serving["tf_use_legacy_keras"] is None
    assert serving["tf_enable_onednn_opts"] == "1" and serving["onednn_off"]["tf_enable_onednn_opts"] == "0"
    for runs, model in itertools.product((serving, serving["onednn_off"]),
                                         ("model", "model_examples", "trivial", "trivial_columns", "tower")):
        assert set(runs[model]) == BATCHES
        for batch, timing in runs[model].items():
            assert timing["rows"] == int(batch)
            assert 0 < timing["p50_ms"] <= timing["p99_ms"] and finite(timing["p99_ms"])
            assert finite(timing["rows_per_sec"]) and timing["rows_per_sec"] > 0


def test_markdown_has_one_section_per_measure(smoke):
    _, printed = smoke
    for heading in ("### Quality", "### Training speed", "### Memory", "### Serving"):
        assert heading in printed


def built_model(config, synthetic_dir):
    from ppnet.data.schema import input_kinds
    from ppnet.data.split import make_splits
    from ppnet.model import build_model
    from ppnet.stats import compute_stats

    train_split, _ = make_splits(config, synthetic_dir, None)
    return build_model(config, compute_stats(config, train_split, input_kinds(config, list(train_split.files))))


@pytest.mark.parametrize("overrides", MODEL_MODES)
def test_forward_flops_are_twice_the_tower_kernels(overrides, synthetic_dir):
    """2 * in * out per Dense is 2 * (kernel size) summed over the tower's and the gates' kernels."""
    from ppnet.bench import forward_flops

    config = small_config(*overrides)
    model = built_model(config, synthetic_dir)
    kernels = [w for w in model.tower.trainable_weights if "kernel" in w.name]
    assert forward_flops(config) == sum(2 * int(np.prod(w.shape)) for w in kernels)


@pytest.mark.parametrize("overrides", MODEL_MODES)
def test_train_flops_skip_only_the_gates_input_gradient_of_the_stopped_tower_input(overrides, synthetic_dir):
    """3x forward, less ``2 * width * hidden`` per gate when the gates read a stop_gradient copy
    of the tower's input (width read off the built tower's first kernel)."""
    from ppnet.bench import forward_flops, train_flops

    config = small_config(*overrides)
    model = built_model(config, synthetic_dir)
    shared = model.gated and config.model.gate_stop_gradient == "shared"
    width, gates = model.tower.dense[0].kernel.shape[0], len(model.tower.dense)
    skipped = 2 * width * config.model.gate_hidden * gates if shared else 0
    assert train_flops(config) == 3 * forward_flops(config) - skipped


def test_the_dnn_baseline_gets_its_own_tuning_and_the_user_set_wins() -> None:
    from pathlib import Path

    from ppnet.bench import BASELINE_TUNING, CONFIGS, variant_sets
    from ppnet.config import load_config

    kuairand = CONFIGS / "kuairand.toml"
    dropout = {variant: load_config(kuairand, variant_sets(kuairand, variant, [], 42)).model.dropout
               for variant in ("ppnet", "dnn")}
    assert dropout == {"ppnet": 0.0, "dnn": 0.2} and "kuairand.toml" in BASELINE_TUNING
    user = load_config(kuairand, variant_sets(kuairand, "dnn", ["model.dropout=0.3"], 42))
    assert user.model.dropout == 0.3 and user.model.name == "dnn" and user.train.seed == 42
    assert variant_sets(Path("other.toml"), "dnn", [], 1) == ["model.name=dnn", "train.seed=1"]
