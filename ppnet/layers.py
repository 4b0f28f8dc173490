"""PPNet's building blocks as plain Keras layers: the GateNN and the gated DNN tower.

These know nothing of configs, files or features: they map tensors to tensors, so they can be
reused and tested alone. Both serialise through ``get_config``.
"""

from __future__ import annotations

import tensorflow as tf


class GateNN(tf.keras.layers.Layer):
    """LHUC gate: ``2 * sigmoid(Dense(units)(Dense(hidden, relu)(x)))``, one multiplier per unit.

    The output layer starts at zero (kernel and bias), so an untrained gate is exactly 1 and a
    gated tower computes the same function as the plain one; the factor 2 lets training scale a
    unit up as well as down, in (0, 2).
    """

    def __init__(self, units: int, hidden_units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden_units = hidden_units
        self.hidden = tf.keras.layers.Dense(hidden_units, activation="relu", name="hidden")
        self.scale = tf.keras.layers.Dense(units, activation="sigmoid", kernel_initializer="zeros",
                                           bias_initializer="zeros", name="scale")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return 2.0 * self.scale(self.hidden(inputs))

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "hidden_units": self.hidden_units}


class GatedTower(tf.keras.layers.Layer):
    """DNN tower → one logit per row, optionally with a GateNN in front of every Dense layer.

    ``call(x, gate_input)``: for each Dense layer (hidden layers and the logit layer) the layer's
    input is multiplied element-wise by the gate computed from ``gate_input``. With
    ``gated=False`` it is the plain DNN baseline and ``gate_input`` is ignored.
    """

    def __init__(self, hidden_units: list[int], gate_hidden: int = 64, gated: bool = True,
                 dropout: float = 0.0, batch_norm: bool = False, output_bias: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = list(hidden_units)
        self.gate_hidden = gate_hidden
        self.gated = gated
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.output_bias = output_bias
        self.dense = [tf.keras.layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(self.hidden_units)]
        self.dense.append(tf.keras.layers.Dense(
            1, bias_initializer=tf.keras.initializers.Constant(output_bias), name="logit"))
        self.norms = [tf.keras.layers.BatchNormalization(name=f"batch_norm_{i}") if batch_norm else None
                      for i in range(len(self.hidden_units))]
        self.drops = [tf.keras.layers.Dropout(dropout) if dropout else None for _ in self.hidden_units]
        self.gates: list[GateNN] = []

    def build(self, input_shape: tf.TensorShape) -> None:
        if self.gated:
            widths = [int(input_shape[-1]), *self.hidden_units]  # input width of each Dense layer
            self.gates = [GateNN(w, self.gate_hidden, name=f"gate_{i}") for i, w in enumerate(widths)]
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, gate_input: tf.Tensor | None = None, training: bool | None = None,
             return_gates: bool = False):
        x, gate_values = inputs, []
        for i, dense in enumerate(self.dense):
            if self.gated:
                gate = self.gates[i](gate_input)
                gate_values.append(gate)
                x = x * gate
            x = dense(x)
            if i < len(self.hidden_units):
                if self.norms[i] is not None:
                    x = self.norms[i](x, training=training)
                x = tf.nn.relu(x)
                if self.drops[i] is not None:
                    x = self.drops[i](x, training=training)
        logit = tf.squeeze(x, axis=-1)
        return (logit, gate_values) if return_gates else logit

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_units": self.hidden_units, "gate_hidden": self.gate_hidden,
                "gated": self.gated, "dropout": self.dropout, "batch_norm": self.batch_norm,
                "output_bias": self.output_bias}
