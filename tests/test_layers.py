"""GateNN and GatedTower: identity at init, gate range, equivalence with the plain DNN, config."""

import numpy as np
import tensorflow as tf

from ppnet.layers import GatedTower, GateNN


def test_untrained_gate_is_exactly_one():
    gate = GateNN(units=7, hidden_units=5)
    values = gate(tf.random.normal([32, 11])).numpy()
    assert values.shape == (32, 7)
    np.testing.assert_array_equal(values, np.ones_like(values))


def test_gate_values_stay_in_open_interval_zero_two():
    gate = GateNN(units=64, hidden_units=16)
    gate(tf.zeros([1, 8]))
    gate.scale.set_weights([np.random.default_rng(0).normal(0, 0.5, (16, 64)), np.zeros(64)])
    values = gate(tf.random.normal([256, 8], stddev=1.0, seed=1)).numpy()
    assert values.min() > 0.0 and values.max() < 2.0
    assert values.min() < 0.9 and values.max() > 1.1  # both scaling down and up are reachable


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
    tower.gates[0].scale.set_weights([np.full((5, 12), 0.5), np.zeros(12)])
    assert not np.allclose(tower(x, gate_input).numpy(), before)


def test_layers_round_trip_through_get_config():
    gate = GateNN.from_config(GateNN(units=3, hidden_units=2, name="g").get_config())
    assert (gate.units, gate.hidden_units, gate.name) == (3, 2, "g")
    config = GatedTower([8, 4], gate_hidden=5, gated=False, dropout=0.1, batch_norm=True, output_bias=-0.2).get_config()
    tower = GatedTower.from_config(config)
    assert tower.get_config() == config
    assert tower(tf.zeros([2, 3]), training=True).shape == (2,)
