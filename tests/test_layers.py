"""GroupedEmbedding, GateNNs and GatedTower: identity at init, gate range, fused gates equal
separate ones, equivalence with the plain DNN, grouped tables equal separate ones, the gate-input layers, config."""

import numpy as np
import tensorflow as tf

from ppnet.layers import (
    GatedTower,
    GateNNs,
    GroupedEmbedding,
    MixtureOfExperts,
    StoppedIdFields,
    StoppedTowerInput,
)


def test_untrained_gates_are_exactly_one():
    gates = GateNNs(widths=[7, 3], hidden_units=5)
    values = [g.numpy() for g in gates(tf.random.normal([32, 11]))]
    assert [v.shape for v in values] == [(32, 7), (32, 3)]
    for v in values:
        np.testing.assert_array_equal(v, np.ones_like(v))


def test_gate_values_stay_in_open_interval_zero_two():
    gates = GateNNs(widths=[64], hidden_units=16)
    gates(tf.zeros([1, 8]))
    gates.scales[0].set_weights([np.random.default_rng(0).normal(0, 0.5, (16, 64)), np.zeros(64)])
    values = gates(tf.random.normal([256, 8], stddev=1.0, seed=1))[0].numpy()
    assert values.min() > 0.0 and values.max() < 2.0
    assert values.min() < 0.9 and values.max() > 1.1  # both scaling down and up are reachable


def test_fused_hidden_layer_equals_one_gate_network_per_layer():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(16, 6)), tf.float32)
    gates = GateNNs(widths=[4, 3], hidden_units=5)
    gates(x)
    for scale in gates.scales:
        scale.set_weights([rng.normal(size=w.shape) for w in scale.get_weights()])
    kernel, bias = gates.hidden.get_weights()
    for i, (gate, scale) in enumerate(zip(gates(x), gates.scales)):
        columns = slice(5 * i, 5 * i + 5)  # gate i's own hidden units
        hidden = np.maximum(x.numpy() @ kernel[:, columns] + bias[columns], 0.0)
        w, b = scale.get_weights()
        np.testing.assert_allclose(gate.numpy(), 2.0 / (1.0 + np.exp(-(hidden @ w + b))), rtol=1e-5)


def test_gate_input_parts_in_training_equal_the_concatenated_input():
    """Training multiplies each part by its rows of the hidden kernel: same gates, same gradients."""
    rng = np.random.default_rng(2)
    frozen, ids = (tf.constant(rng.normal(size=(16, n)), tf.float32) for n in (6, 3))
    gates = GateNNs(widths=[4, 3], hidden_units=5)
    gates([frozen, ids])
    gates.set_weights([rng.normal(size=w.shape) for w in gates.get_weights()])
    results = []
    as_parts, as_one = (lambda: [tf.stop_gradient(frozen), ids]), (lambda: tf.concat([frozen, ids], -1))
    for join, training in ((as_parts, True), (as_one, False)):
        with tf.GradientTape() as tape:
            tape.watch(ids)
            inputs = join()
            loss = tf.add_n([tf.reduce_sum(g * w) for g, w in zip(gates(inputs, training=training), (1.0, -2.0))])
        results.append([*tape.gradient(loss, [ids, *gates.trainable_weights]), loss])
    for split, joined in zip(*results):
        np.testing.assert_allclose(split.numpy(), joined.numpy(), rtol=1e-5, atol=1e-6)


def test_gates_build_from_one_shape_or_parts_with_keras_variable_names():
    for shape in ((None, 9), [None, 9], tf.TensorShape([None, 9]), [tf.TensorShape([None, 6]), (None, 3)]):
        gates = GateNNs(widths=[4], hidden_units=5)
        gates.build(shape)
        assert gates.hidden.kernel.shape == (9, 5), shape
    gates = GateNNs(widths=[4], hidden_units=5, name="gates")
    gates([tf.zeros([2, 6]), tf.zeros([2, 3])])
    assert gates.hidden.kernel.name == "gates/hidden/kernel:0"


def test_gated_tower_at_init_equals_plain_tower_with_same_weights():
    x, gate_input = tf.random.normal([16, 12], seed=2), tf.random.normal([16, 6], seed=3)
    gated = GatedTower([8, 4], gate_hidden=5, gated=True)
    plain = GatedTower([8, 4], gated=False)
    gated(x, gate_input), plain(x)
    for a, b in zip(gated.dense, plain.dense):
        b.set_weights(a.get_weights())
    logit, gates = gated(x, gate_input, return_gates=True)
    np.testing.assert_allclose(logit.numpy(), plain(x).numpy(), rtol=1e-6)
    assert [g.shape[-1] for g in gates] == [12, 8, 4]  # one gate per Dense input, logit layer included


def test_gates_change_the_output_once_trained():
    x, gate_input = tf.random.normal([16, 12], seed=4), tf.random.normal([16, 6], seed=5)
    tower = GatedTower([8], gate_hidden=5)
    before = tower(x, gate_input).numpy()
    tower.gates.scales[0].set_weights([np.full((5, 12), 0.5), np.zeros(12)])
    assert not np.allclose(tower(x, gate_input).numpy(), before)


def test_grouped_embedding_looks_each_field_up_in_its_own_table():
    table = GroupedEmbedding([3, 5, 2], dim=4)
    indices = tf.constant([[0, 4, 1], [2, 0, 0]], tf.int64)
    out = table(indices).numpy()
    weights = table.embeddings.numpy()
    assert out.shape == (2, 3, 4) and weights.shape == (10, 4)
    for field in range(3):
        own = weights[table.rows(field)]
        np.testing.assert_array_equal(out[:, field], own[indices.numpy()[:, field]])


def test_grouped_embedding_gradient_reaches_only_the_rows_used():
    table = GroupedEmbedding([3, 5], dim=2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(table(tf.constant([[1, 4]], tf.int64)))
    grad = tf.convert_to_tensor(tape.gradient(loss, table.embeddings)).numpy()
    assert sorted(np.flatnonzero(grad.any(axis=1))) == [1, 3 + 4]


def test_layers_round_trip_through_get_config():
    gates = GateNNs.from_config(GateNNs(widths=[3, 2], hidden_units=2, name="g").get_config())
    assert (gates.widths, gates.hidden_units, gates.name) == ([3, 2], 2, "g")
    table = GroupedEmbedding.from_config(GroupedEmbedding([3, 5], dim=2, name="t").get_config())
    assert (table.sizes, table.dim, table.name) == ([3, 5], 2, "t")
    config = GatedTower([8, 4], gate_hidden=5, gated=False, dropout=0.1, batch_norm=True, output_bias=-0.2).get_config()
    tower = GatedTower.from_config(config)
    assert tower.get_config() == config
    assert tower(tf.zeros([2, 3]), training=True).shape == (2,)


def test_fused_hidden_layer_starts_with_the_scale_of_one_gate_network():
    gates = GateNNs(widths=[300, 200, 100, 50], hidden_units=64)
    gates(tf.zeros([1, 600]))
    kernel = gates.hidden.get_weights()[0]
    limit = np.sqrt(6.0 / (600 + 64))  # Glorot-uniform of a separate Dense(64) on 600 inputs
    assert kernel.shape == (600, 256) and 0.98 * limit < np.abs(kernel).max() <= limit


def test_gate_input_layers_stop_exactly_the_gradient_of_their_mode():
    tower_rows = [tf.Variable(tf.random.normal([4, 3, 2])), tf.Variable(tf.random.normal([4, 1, 5]))]
    numeric = tf.Variable(tf.random.normal([4, 2]))
    id_rows = [tf.Variable(tf.random.normal([4, 2, 2]))]
    ids_mode = StoppedIdFields([[False, True, False], [True]])
    for layer in (StoppedTowerInput(), StoppedIdFields.from_config(ids_mode.get_config())):
        with tf.GradientTape() as tape:
            tower_input = tf.concat([tf.reshape(r, [4, -1]) for r in tower_rows] + [numeric], axis=-1)
            parts = layer(tower_input, tower_rows, [numeric], id_rows)
            total = tf.add_n([tf.reduce_sum(p) for p in parts])
        grads = tape.gradient(
            total, [*tower_rows, numeric, *id_rows], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        np.testing.assert_array_equal(parts[0], tower_input)  # the values pass unchanged
        if isinstance(layer, StoppedTowerInput):  # the tower's input stopped whole; the ids train
            assert [p.shape[-1] for p in parts] == [tower_input.shape[-1], 2 * 2]
            assert all(not np.any(g) for g in grads[:3]) and np.all(grads[3].numpy() == 1.0)
        else:  # one part; only the flagged id fields stopped
            assert len(parts) == 1
            np.testing.assert_array_equal(grads[0].numpy()[:, :, 0], np.tile([1.0, 0.0, 1.0], (4, 1)))
            assert not np.any(grads[1]) and np.all(grads[2].numpy() == 1.0) and not np.any(grads[3])


def test_mixture_of_experts_gives_each_task_a_convex_mix_of_the_same_experts():
    layer = MixtureOfExperts(experts=3, units=[8, 4], tasks=2, name="m")
    assert MixtureOfExperts.from_config(layer.get_config()).get_config() == layer.get_config()
    x = tf.random.normal([5, 6], seed=1)
    mixes = layer(x)
    assert [m.shape for m in mixes] == [(5, 4), (5, 4)]
    experts = []
    for layers in layer.expert_layers:
        h = x
        for dense in layers:
            h = dense(h)
        experts.append(h)
    for gate, mix in zip(layer.gates, mixes):
        weights = gate(x)
        np.testing.assert_allclose(tf.reduce_sum(weights, axis=-1).numpy(), 1.0, rtol=1e-6)
        expected = sum(weights[:, e : e + 1] * experts[e] for e in range(3))
        np.testing.assert_allclose(mix.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(mixes[0].numpy(), mixes[1].numpy())  # each task has its own gate
