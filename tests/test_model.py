"""The ranking model: PPNet == DNN at init, stop-gradient in both gate modes, loss reduction."""

import numpy as np
import pytest
import tensorflow as tf

from ppnet.data.pipeline import iter_batches
from ppnet.data.schema import input_kinds
from ppnet.data.split import make_splits
from ppnet.model import OPTIMIZER_SLOTS, FeatureGroups, build_model, weight_bytes
from ppnet.stats import Stats, compute_stats
from tests.helpers import multitask_config, small_config


@pytest.fixture(scope="module")
def batch_and_stats(synthetic_dir):
    config = small_config()
    train_split, _ = make_splits(config, synthetic_dir, None)
    kinds = input_kinds(config, list(train_split.files))
    stats = compute_stats(config, train_split, kinds)
    features, targets = next(iter_batches(train_split, kinds, ["is_click"], 64))
    return ({k: tf.constant(v) for k, v in features.items()}, {"is_click": tf.constant(targets["is_click"])}), stats


def randomize_gate_outputs(model):
    """Trained gates: the zero-initialised last layer would otherwise pass no gradient back."""
    rng = np.random.default_rng(0)
    for scale in model.tower.gates.scales:
        kernel, bias = scale.get_weights()
        scale.set_weights([rng.normal(0, 0.3, kernel.shape), bias])


def gate_gradients(model, features):
    """Sum of |d gates / d table| over each feature's own table, keyed ("dnn"|"gate", feature)."""
    with tf.GradientTape() as tape:
        gates = model.forward(features).gates[model.task_names[0]]
        total = tf.add_n([tf.reduce_sum(g) for g in gates])
    tables = {("dnn", name): model.table_rows(name) for names in model.fields.values() for name in names}
    tables.update(
        {("gate", name): model.table_rows(name, gate=True) for names in model.gate_fields.values() for name in names}
    )
    variables = list({id(v): v for v, _ in tables.values()}.values())
    grads = dict(
        zip(map(id, variables), tape.gradient(total, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO))
    )
    return {
        key: float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(grads[id(v)])[rows]))) for key, (v, rows) in tables.items()
    }


def test_ppnet_equals_dnn_with_the_same_weights_at_init(batch_and_stats):
    (features, _), stats = batch_and_stats
    ppnet = build_model(small_config(), stats)
    dnn = build_model(small_config("model.name=dnn"), stats)
    for group, table in dnn.embeddings.items():
        table.set_weights(ppnet.embeddings[group].get_weights())
    for a, b in zip(ppnet.tower.dense, dnn.tower.dense):
        b.set_weights(a.get_weights())
    gates = ppnet.forward(features).gates[ppnet.task_names[0]]
    assert all(np.all(g.numpy() == 1.0) for g in gates)
    np.testing.assert_allclose(ppnet(features).numpy(), dnn(features).numpy(), rtol=1e-5, atol=1e-6)
    assert dnn.tower.gates is None and len(gates) == len(small_config().model.hidden_units) + 1


def test_shared_mode_stops_gate_gradient_into_dnn_embeddings(batch_and_stats):
    (features, _), stats = batch_and_stats
    model = build_model(small_config("model.gate_stop_gradient=shared"), stats)
    randomize_gate_outputs(model)
    grads = gate_gradients(model, features)
    dnn_tables = [key for key in grads if key[0] == "dnn"]
    gate_tables = [key for key in grads if key[0] == "gate"]
    assert len(gate_tables) == 3 and dnn_tables
    assert all(grads[n] == 0.0 for n in dnn_tables), grads
    assert all(grads[n] > 0.0 for n in gate_tables), grads


def test_ids_mode_stops_gradient_only_into_personal_id_embeddings(batch_and_stats):
    (features, _), stats = batch_and_stats
    config = small_config("model.gate_stop_gradient=ids")
    model = build_model(config, stats)
    randomize_gate_outputs(model)
    grads = gate_gradients(model, features)
    assert all(kind == "dnn" for kind, _ in grads)  # ids mode has no gate-only tables
    personal = [key for key in grads if key[1] in config.model.personal_ids]
    others = [n for n in grads if n not in personal]
    assert len(personal) == 3 and others
    assert all(grads[n] == 0.0 for n in personal), grads
    assert all(grads[n] > 0.0 for n in others), grads


def test_ids_only_in_the_gates(batch_and_stats):
    """personal_ids_in_tower=false: the tower has no tables for the ids, the gates do and learn them."""
    (features, labels), stats = batch_and_stats
    config = small_config("model.personal_ids_in_tower=false")
    model = build_model(config, stats)
    tower_fields = [name for names in model.fields.values() for name in names]
    gate_fields = [name for names in model.gate_fields.values() for name in names]
    assert sorted(gate_fields) == sorted(config.model.personal_ids)
    assert tower_fields and not set(tower_fields) & set(config.model.personal_ids)
    with_ids = build_model(small_config(), stats)
    assert model.tower.dense[0].kernel.shape[0] == with_ids.tower.dense[0].kernel.shape[0] - sum(
        config.feature(name).dim for name in config.model.personal_ids
    )
    randomize_gate_outputs(model)
    with tf.GradientTape() as tape:
        loss = model.compute_loss((features, labels), training=True)
    table, rows = model.table_rows("user_id", gate=True)
    assert float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(tape.gradient(loss, table))[rows]))) > 0.0


def test_training_loss_still_reaches_dnn_embeddings_in_shared_mode(batch_and_stats):
    (features, labels), stats = batch_and_stats
    model = build_model(small_config(), stats)
    with tf.GradientTape() as tape:
        loss = model.compute_loss((features, labels), training=True)
    table, rows = model.table_rows("user_id")
    assert float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(tape.gradient(loss, table))[rows]))) > 0.0


def test_loss_is_mean_cross_entropy_plus_embedding_l2(batch_and_stats):
    (features, labels), stats = batch_and_stats
    plain = build_model(small_config("model.embedding_l2=0.0"), stats)
    logits = plain(features)
    expected = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels["is_click"], logits))
    assert float(plain.compute_loss((features, labels))) == pytest.approx(float(expected), rel=1e-5)
    regularised = build_model(small_config("model.embedding_l2=0.1"), stats)
    regularised.set_weights(plain.get_weights())
    assert float(regularised.compute_loss((features, labels))) > float(expected)


def test_lazy_adam_matches_adam_on_first_step_and_leaves_untouched_rows_alone():
    from ppnet.optimizers import LazyAdam

    def run(optimizer, steps):
        table = tf.Variable(tf.ones([6, 2]))
        for rows in steps:
            grad = tf.IndexedSlices(tf.ones([len(rows), 2]), tf.constant(rows), tf.constant([6, 2]))
            optimizer.apply_gradients([(grad, table)])
        return table.numpy()

    np.testing.assert_allclose(
        run(LazyAdam(0.1), [[0, 2, 2]]), run(tf.keras.optimizers.Adam(0.1), [[0, 2, 2]]), rtol=1e-6
    )
    lazy = run(LazyAdam(0.1), [[0, 2], [4]])
    assert np.all(lazy[[1, 3, 5]] == 1.0)  # never touched
    after_first = run(LazyAdam(0.1), [[0, 2]])
    np.testing.assert_array_equal(lazy[[0, 2]], after_first[[0, 2]])  # not moved by step 2's momentum
    assert np.all(run(tf.keras.optimizers.Adam(0.1), [[0, 2], [4]])[[0, 2]] != after_first[[0, 2]])


@pytest.mark.parametrize("sparse", [False, True])
def test_fused_adam_makes_the_same_updates_as_keras_adam(sparse):
    from ppnet.optimizers import FusedAdam

    rng = np.random.default_rng(3)
    start = rng.normal(size=(6, 4)).astype(np.float32)
    fused_var, keras_var = tf.Variable(start), tf.Variable(start)
    fused, keras = FusedAdam(learning_rate=0.01), tf.keras.optimizers.Adam(learning_rate=0.01)
    for _ in range(3):
        values = tf.constant(rng.normal(size=(5, 4)), tf.float32)
        dense = tf.constant(rng.normal(size=(6, 4)), tf.float32)
        grad = (
            tf.IndexedSlices(values, tf.constant([0, 2, 2, 5, 0]), dense_shape=tf.constant([6, 4])) if sparse else dense
        )
        fused.apply_gradients([(grad, fused_var)])
        keras.apply_gradients([(grad, keras_var)])
    assert not np.allclose(fused_var.numpy(), start)
    np.testing.assert_allclose(fused_var.numpy(), keras_var.numpy(), rtol=1e-5, atol=1e-6)


def test_a_model_without_categorical_features_trains_with_embedding_l2(synthetic_dir, tmp_path):
    from ppnet.config import load_config

    path = tmp_path / "numeric.toml"
    path.write_text(
        '[data]\nlabel = "is_click"\nuser_column = "user_id"\nsplit_column = "date"\n'
        '[model]\nname = "dnn"\npersonal_ids = []\nhidden_units = [8]\nembedding_l2 = 1e-4\n'
        '[[features]]\nname = "video_duration"\nkind = "numeric"\nlog1p = true\n'
    )
    config = load_config(path)
    train_split, _ = make_splits(config, synthetic_dir, None)
    kinds = input_kinds(config, list(train_split.files))
    model = build_model(config, compute_stats(config, train_split, kinds))
    features, targets = next(iter_batches(train_split, kinds, ["is_click"], 32))
    loss = model.compute_loss(({k: tf.constant(v) for k, v in features.items()}, targets))
    assert np.isfinite(float(loss)) and not model.embeddings


@pytest.mark.parametrize(
    "sets, tower_has_ids, gate_ids",
    [
        ([], True, True),
        (["model.gate_stop_gradient=ids"], True, False),
        (["model.personal_ids_in_tower=false"], False, True),
        (["model.name=dnn"], True, False),
    ],
)
def test_feature_groups_name_what_each_feature_is_for(sets, tower_has_ids, gate_ids):
    config = small_config(*sets)
    groups = FeatureGroups.of(config)
    categorical = [f.name for f in config.features if f.kind != "numeric"]
    ids = list(config.model.personal_ids)
    assert groups.personal_ids == (() if config.model.name == "dnn" else tuple(ids))
    assert list(groups.tower) == [n for n in categorical if tower_has_ids or n not in ids]
    assert list(groups.gate_ids) == (ids if gate_ids else [])


def test_forward_names_logits_and_gates_by_task(batch_and_stats):
    (features, _), stats = batch_and_stats
    model = build_model(small_config(), stats)
    output = model.forward(features)
    label = small_config().data.label
    assert list(output.logits) == list(output.gates) == [label] == model.task_names
    np.testing.assert_array_equal(output.logits[label], model(features))
    assert [g.shape[-1] for g in output.gates[label]] == [
        model.tower.dense[0].kernel.shape[0],
        *small_config().model.hidden_units,
    ]


def test_every_optimizer_the_config_accepts_is_built():
    from typing import get_args, get_type_hints

    from ppnet.config import TrainConfig
    from ppnet.optimizers import OPTIMIZERS

    assert set(get_args(get_type_hints(TrainConfig)["optimizer"])) == set(OPTIMIZERS)


def test_untrained_pepnet_is_ppnet_and_epnet_reads_the_shared_embeddings_under_stop_gradient(batch_and_stats):
    (features, _), stats = batch_and_stats
    pepnet = build_model(small_config("model.name=pepnet", 'model.domain_features=["tab"]'), stats)
    ppnet = build_model(small_config(), stats)
    for group, table in ppnet.embeddings.items():
        table.set_weights(pepnet.embeddings[group].get_weights())
    for group, table in ppnet.gate_embeddings.items():
        table.set_weights(pepnet.gate_embeddings[group].get_weights())
    ppnet.tower.set_weights(pepnet.tower.get_weights())
    inputs = pepnet.tower_inputs(features)
    assert np.all(inputs.epnet_gate.numpy() == 1.0)
    np.testing.assert_allclose(pepnet(features).numpy(), ppnet(features).numpy(), rtol=1e-6, atol=1e-6)

    scale = pepnet.epnet.scales[0]  # trained: the zero-initialised output layer would pass no gradient back
    scale.set_weights([np.random.default_rng(0).normal(0, 0.3, w.shape) for w in scale.get_weights()])
    tower_tables = [t.embeddings for t in pepnet.embeddings.values()]
    domain_tables = [t.embeddings for t in pepnet.domain_embeddings.values()]
    with tf.GradientTape() as tape:
        gate = tf.reduce_sum(pepnet.tower_inputs(features, training=True).epnet_gate)
    to_tower, to_domain = tape.gradient(
        gate, [tower_tables, domain_tables], unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    assert all(not np.any(tf.convert_to_tensor(g).numpy()) for g in to_tower)
    assert all(np.any(tf.convert_to_tensor(g).numpy()) for g in to_domain)


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["model.gate_stop_gradient=ids"],
        ["model.personal_ids_in_tower=false"],
        ["model.name=dnn"],
        ["model.name=pepnet", 'model.domain_features=["tab"]', "train.optimizer=adagrad"],
        ["model.name=mmoe", "model.experts=3", "train.optimizer=sgd"],
        ["features.user_id.kind=hash", "features.user_id.bins=1000"],
        ["multitask"],  # pepnet, three towers
        ["multitask", 'model.task_sharing="primary"'],  # and the later tasks' own id tables
        # and their own tables of two features, read by wider towers; long view builds on click;
        # like's tower is smaller
        [
            "multitask",
            'model.task_sharing="primary"',
            'model.task_features=["video_type", "tab"]',
            'tasks.long_view.builds_on="is_click"',
            "tasks.is_like.hidden_units=[8]",
        ],
        ["multitask", "model.name=mmoe", "model.domain_features=[]"],
    ],
)
def test_weight_bytes_counts_the_built_models_weights(batch_and_stats, sets):
    """The estimate that refuses oversized models before they are built is the built model's size."""
    _, stats = batch_and_stats
    config = multitask_config(*sets[1:]) if sets[:1] == ["multitask"] else small_config(*sets)
    if config.feature("user_id").kind == "hash":  # hashing has no vocabulary pass
        stats = Stats(
            **{**vars(stats), "vocabularies": {k: v for k, v in stats.vocabularies.items() if k != "user_id"}}
        )
    model = build_model(config, stats, compile=False)
    parts = weight_bytes(config, stats)
    factor = 1 + OPTIMIZER_SLOTS[config.train.optimizer]
    tables = {id(layer.embeddings) for layer in model.embedding_tables()}
    table_weights = sum(int(np.prod(v.shape)) for layer in model.embedding_tables() for v in [layer.embeddings])
    dense_weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables if id(v) not in tables)
    assert sum(v for k, v in parts.items() if k.startswith("features.")) == table_weights * 4 * factor
    assert parts["model.hidden_units"] == dense_weights * 4 * (factor + 1)
