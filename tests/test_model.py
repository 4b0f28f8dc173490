"""The ranking model: PPNet == DNN at init, stop-gradient in both gate modes, loss reduction."""

import numpy as np
import pytest
import tensorflow as tf

from ppnet import data
from ppnet.model import build_model
from ppnet.stats import compute_stats
from tests.conftest import small_config


@pytest.fixture(scope="module")
def batch_and_stats(synthetic_dir):
    config = small_config()
    train_split, _ = data.make_splits(config, synthetic_dir, None)
    kinds = data.input_kinds(config, list(train_split.files))
    stats = compute_stats(config, train_split, kinds)
    features, labels = next(data.iter_batches(train_split, kinds, "is_click", 64))
    return ({k: tf.constant(v) for k, v in features.items()}, tf.constant(labels)), stats


def randomize_gate_outputs(model):
    """Trained gates: the zero-initialised last layer would otherwise pass no gradient back."""
    rng = np.random.default_rng(0)
    for gate in model.tower.gates:
        kernel, bias = gate.scale.get_weights()
        gate.scale.set_weights([rng.normal(0, 0.3, kernel.shape), bias])


def gate_gradients(model, features):
    with tf.GradientTape() as tape:
        _, gates, _ = model.forward(features)
        total = tf.add_n([tf.reduce_sum(g) for g in gates])
    tables = {("dnn", name): layer.embeddings for name, layer in model.embeddings.items()}
    tables.update({("gate", name): layer.embeddings for name, layer in model.gate_embeddings.items()})
    grads = tape.gradient(total, list(tables.values()), unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return {key: float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) for key, g in zip(tables, grads)}


def test_ppnet_equals_dnn_with_the_same_weights_at_init(batch_and_stats):
    (features, _), stats = batch_and_stats
    ppnet = build_model(small_config(), stats)
    dnn = build_model(small_config("model.name=dnn"), stats)
    for name, table in dnn.embeddings.items():
        table.set_weights(ppnet.embeddings[name].get_weights())
    for a, b in zip(ppnet.tower.dense, dnn.tower.dense):
        b.set_weights(a.get_weights())
    _, gates, _ = ppnet.forward(features)
    assert all(np.all(g.numpy() == 1.0) for g in gates)
    np.testing.assert_allclose(ppnet(features).numpy(), dnn(features).numpy(), rtol=1e-5, atol=1e-6)
    assert not dnn.tower.gates and len(ppnet.tower.gates) == len(small_config().model.hidden_units) + 1


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


def test_training_loss_still_reaches_dnn_embeddings_in_shared_mode(batch_and_stats):
    (features, labels), stats = batch_and_stats
    model = build_model(small_config(), stats)
    with tf.GradientTape() as tape:
        loss = model.compute_loss((features, labels), training=True)
    table = model.embeddings["user_id"].embeddings
    assert float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(tape.gradient(loss, table))))) > 0.0


def test_loss_is_mean_cross_entropy_plus_embedding_l2(batch_and_stats):
    (features, labels), stats = batch_and_stats
    plain = build_model(small_config("model.embedding_l2=0.0"), stats)
    logits = plain(features)
    expected = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
    assert float(plain.compute_loss((features, labels))) == pytest.approx(float(expected), rel=1e-5)
    regularised = build_model(small_config("model.embedding_l2=0.1"), stats)
    regularised.set_weights(plain.get_weights())
    assert float(regularised.compute_loss((features, labels))) > float(expected)


def test_lazy_adam_matches_adam_on_first_step_and_leaves_untouched_rows_alone():
    from ppnet.model import LazyAdam

    def run(optimizer, steps):
        table = tf.Variable(tf.ones([6, 2]))
        for rows in steps:
            grad = tf.IndexedSlices(tf.ones([len(rows), 2]), tf.constant(rows), tf.constant([6, 2]))
            optimizer.apply_gradients([(grad, table)])
        return table.numpy()

    np.testing.assert_allclose(run(LazyAdam(0.1), [[0, 2, 2]]), run(tf.keras.optimizers.Adam(0.1), [[0, 2, 2]]),
                               rtol=1e-6)
    lazy = run(LazyAdam(0.1), [[0, 2], [4]])
    assert np.all(lazy[[1, 3, 5]] == 1.0)  # never touched
    after_first = run(LazyAdam(0.1), [[0, 2]])
    np.testing.assert_array_equal(lazy[[0, 2]], after_first[[0, 2]])  # not moved by step 2's momentum
    assert np.all(run(tf.keras.optimizers.Adam(0.1), [[0, 2], [4]])[[0, 2]] != after_first[[0, 2]])
