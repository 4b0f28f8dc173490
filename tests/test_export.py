"""The SavedModel: TF Serving layout, loads with TensorFlow alone, same outputs as the model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import ppnet
from ppnet.cli import main
from ppnet.data.schema import to_arrays
from ppnet.data.split import Split
from ppnet.data.tfrecord import to_example
from ppnet.errors import PPNetError
from ppnet.export import export_model
from ppnet.rundir import load_run
from ppnet.train import train
from tests.helpers import small_config

RELOAD_SCRIPT = """
import sys
sys.modules["ppnet"] = None  # importing ppnet (or relying on it) must fail in this process
import json, numpy as np, tensorflow as tf
export, inputs, output = sys.argv[1:4]
arrays = dict(np.load(inputs, allow_pickle=True))
model = tf.saved_model.load(export)
serve = model.signatures["serving_default"]
probs = serve(**{k: tf.constant(v) for k, v in arrays.items()})["probability"].numpy()
np.save(output, probs)
print(json.dumps({"signatures": sorted(model.signatures), "keras": tf.keras.__name__}))
"""


@pytest.fixture(scope="module")
def validation_batch(trained_run, synthetic_dir):
    kinds = json.loads((trained_run / "stats.json").read_text())["kinds"]
    split = Split((sorted(synthetic_dir.glob("*.parquet"))[-1],))
    _, batch = next(split.batches(list(kinds), 300))
    return to_arrays(batch, kinds)


def test_export_layout(trained_run):
    export = trained_run / "export" / "1"
    assert (export / "saved_model.pb").is_file() and (export / "variables").is_dir()
    meta = json.loads((export / "assets.extra" / "ppnet.json").read_text())
    assert meta["label"] == "is_click" and meta["model"] == "ppnet" and "user_id" in meta["inputs"]
    assert meta["ppnet_version"] == ppnet.__version__
    assert [p.name for p in (trained_run / "export").iterdir()] == ["1"]  # no temporary directories left


def test_export_reloads_without_ppnet_in_a_fresh_process(trained_run, validation_batch, tmp_path):
    np.savez(tmp_path / "inputs.npz", **validation_batch)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD_SCRIPT,
            str(trained_run / "export" / "1"),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.npy"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["signatures"] == ["gates", "serve_examples", "serving_default"]
    reloaded = np.load(tmp_path / "out.npy")
    model = load_run(trained_run)
    in_memory = tf.sigmoid(model({k: tf.constant(v) for k, v in validation_batch.items()})).numpy()
    assert reloaded.shape == (300,)
    np.testing.assert_allclose(reloaded, in_memory, rtol=1e-5, atol=1e-6)


def test_unseen_ids_empty_strings_and_bad_numerics_give_valid_probabilities(trained_run):
    serve = tf.saved_model.load(str(trained_run / "export" / "1")).signatures["serving_default"]
    kinds = json.loads((trained_run / "stats.json").read_text())["kinds"]
    odd = {
        "int64": tf.constant([10**15, -(10**12), 0], tf.int64),
        "string": tf.constant(["", "never-seen", "é"]),
        "float32": tf.constant([np.nan, np.inf, -1e30], tf.float32),
    }
    probs = serve(**{name: odd[kind] for name, kind in kinds.items()})["probability"].numpy()
    assert probs.shape == (3,) and np.all(np.isfinite(probs)) and np.all((probs > 0) & (probs < 1))


def test_example_signature_matches_raw_signature(trained_run, validation_batch):
    loaded = tf.saved_model.load(str(trained_run / "export" / "1"))
    kinds = json.loads((trained_run / "stats.json").read_text())["kinds"]
    rows = 20
    examples = [
        to_example({name: validation_batch[name][i : i + 1] for name in kinds}).SerializeToString() for i in range(rows)
    ]
    from_examples = loaded.signatures["serve_examples"](examples=tf.constant(examples))["probability"].numpy()
    raw = loaded.signatures["serving_default"](**{k: tf.constant(v[:rows]) for k, v in validation_batch.items()})[
        "probability"
    ].numpy()
    np.testing.assert_allclose(from_examples, raw, rtol=1e-5, atol=1e-6)


def test_gates_signature_returns_one_gate_per_tower_layer(trained_run, validation_batch):
    gates = tf.saved_model.load(str(trained_run / "export" / "1")).signatures["gates"](
        **{k: tf.constant(v) for k, v in validation_batch.items()}
    )
    config = json.loads((trained_run / "config.json").read_text())
    assert len(gates) == len(config["model"]["hidden_units"]) + 1
    for values in gates.values():
        values = values.numpy()
        assert values.shape[0] == 300 and values.min() >= 0.0 and values.max() <= 2.0


def test_reexport_gets_the_next_version_and_refuses_to_overwrite(trained_run, tmp_path):
    model = load_run(trained_run)
    assert export_model(model, tmp_path).name == "1"
    assert export_model(model, tmp_path).name == "2"
    with pytest.raises(PPNetError, match="already exists"):
        export_model(model, tmp_path, version=2)


def test_failed_export_leaves_nothing_behind(trained_run, tmp_path, monkeypatch):
    model = load_run(trained_run)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(RuntimeError):
        export_model(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_export_carries_weights_but_no_optimizer_state(trained_run):
    saved = tf.train.list_variables(str(trained_run / "export" / "1" / "variables" / "variables"))
    shapes = sorted(shape for name, shape in saved if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    # Only the embedding tables: the tower's weights are graph constants, no optimizer slots.
    tables = sorted(table.embeddings.shape.as_list() for table in load_run(trained_run).embedding_tables())
    assert tables and shapes == tables
    assert not [name for name, _ in saved if "optimizer" in name]


def test_pepnet_export_serves_the_model_and_its_epnet_gate(synthetic_dir, validation_batch, tmp_path):
    run = tmp_path / "pepnet"
    train(small_config("model.name=pepnet", 'model.domain_features=["tab"]', "train.epochs=1"), synthetic_dir, run)
    loaded = tf.saved_model.load(str(run / "export" / "1"))
    inputs = {k: tf.constant(v) for k, v in validation_batch.items()}
    model = load_run(run)
    served = loaded.signatures["serving_default"](**inputs)["probability"].numpy()
    np.testing.assert_allclose(served, tf.sigmoid(model(inputs)).numpy(), rtol=1e-5, atol=1e-6)
    gates = loaded.signatures["gates"](**inputs)
    expected = model.tower_inputs(inputs).epnet_gate.numpy()
    assert expected.shape == (300, model.tower.dense[0].kernel.shape[0] - len(model.stats.numeric))
    np.testing.assert_allclose(gates["epnet_gate"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, 1.0)  # a trained EPNet scales the shared embeddings


def test_a_bfloat16_export_serves_the_float32_models_predictions_closely(trained_run, validation_batch, tmp_path):
    assert main(["export", "--run", str(trained_run), "--out", str(tmp_path), "--precision", "mixed_bfloat16"]) == 0
    meta = json.loads((tmp_path / "1" / "assets.extra" / "ppnet.json").read_text())
    assert meta["precision"] == "mixed_bfloat16"
    served = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]
    inputs = {name: tf.constant(values) for name, values in validation_batch.items()}
    probability = served(**inputs)["probability"]
    expected = tf.sigmoid(load_run(trained_run)(inputs)).numpy()
    assert probability.dtype == tf.float32 and not np.array_equal(probability.numpy(), expected)  # bfloat16 inside
    np.testing.assert_allclose(probability.numpy(), expected, atol=0.01)  # docs/serving.md: the tolerance
