"""PPNet's building blocks as plain Keras layers: grouped embedding tables, the GateNNs and the
gated DNN tower.

These know nothing of configs, files or features: they map tensors to tensors, so they can be
reused and tested alone. All serialise through ``get_config``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class GroupedEmbedding(tf.keras.layers.Layer):
    """Several embedding tables of one dimension stored as one ``[sum(sizes), dim]`` variable.

    Column ``i`` of the input indexes table ``i``, which is rows ``offsets[i] : offsets[i] +
    sizes[i]`` of the variable. One gather, one sparse gradient and one optimizer update replace
    one of each per field: with dozens of fields, those small per-field ops, not the arithmetic,
    dominated a training step and a one-row request.

    Args:
        sizes: the rows of each table, one entry per field, in field order.
        dim: the embedding size shared by all the tables.
        **kwargs: passed to ``tf.keras.layers.Layer``.
    """

    def __init__(self, sizes: list[int], dim: int, **kwargs):
        super().__init__(**kwargs)
        self.sizes, self.dim = [int(s) for s in sizes], int(dim)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def build(self, input_shape: tf.TensorShape) -> None:
        # Keras Embedding's default initializer, so grouping does not change the model.
        self.embeddings = self.add_weight(name="embeddings", shape=[sum(self.sizes), self.dim], initializer="uniform")
        super().build(input_shape)

    def call(self, indices: tf.Tensor) -> tf.Tensor:
        """Looks each field's index up in that field's table.

        Args:
            indices: ``[batch, fields]`` integer rows, ``fields == len(sizes)``; column ``i`` is
                a row of table ``i``, in ``[0, sizes[i])``.

        Returns:
            ``[batch, fields, dim]`` embeddings.
        """
        # embedding_lookup, not gather: it also reads tables sharded over parameter servers.
        return tf.nn.embedding_lookup(self.embeddings, tf.cast(indices, tf.int64) + self.offsets)

    def rows(self, field: int) -> slice:
        """The rows of table ``field`` in the grouped variable."""
        return slice(int(self.offsets[field]), int(self.offsets[field]) + self.sizes[field])

    def get_config(self) -> dict:
        return {**super().get_config(), "sizes": self.sizes, "dim": self.dim}


class GateNNs(tf.keras.layers.Layer):
    """One LHUC GateNN per tower layer: gate ``i`` is ``2 * sigmoid(Dense(widths[i])(Dense(hidden, relu)(x)))``.

    The gates all read the same input, so their hidden layers run as one ``Dense(hidden *
    len(widths))`` split in equal parts: the same function as separate GateNNs (each output layer
    sees only its own hidden units) with one wide matmul instead of several narrow ones. The output
    layers start at zero (kernel and bias), so an untrained gate is exactly 1 and a gated tower
    computes the same function as the plain one; the factor 2 lets training scale a unit up as
    well as down, in (0, 2).

    The output layers compute in float32 under any policy: their matmuls are only ``hidden_units``
    deep, so bfloat16 gains little there, while their sigmoid, its gradient and their bias
    gradients are element-wise passes over the whole width of the tower, which bfloat16 makes
    slower on CPUs (each element converted; docs/performance.md). The gates come out in float32.

    ``inputs`` is one tensor or a list of its parts (concatenated in order). In training each part
    is multiplied by its own rows of the hidden kernel, so a part under ``stop_gradient`` (PPNet's
    copy of the tower's input) costs no backward matmul for its input gradient, otherwise a third
    of that part's training FLOPs. At inference the parts are concatenated: one matmul.

    Args:
        widths: the width of each gate, i.e. of the input of the tower layer it scales.
        hidden_units: the hidden width of each GateNN (the fused hidden layer is
            ``hidden_units * len(widths)`` wide).
        **kwargs: passed to ``tf.keras.layers.Layer``.
    """

    def __init__(self, widths: list[int], hidden_units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.widths, self.hidden_units = [int(w) for w in widths], int(hidden_units)
        self.hidden: tf.keras.layers.Dense | None = None
        self.scales = [
            tf.keras.layers.Dense(
                w,
                activation="sigmoid",
                kernel_initializer="zeros",
                bias_initializer="zeros",
                dtype="float32",
                name=f"scale_{i}",
            )
            for i, w in enumerate(self.widths)
        ]

    def build(self, input_shape: tf.TensorShape | list[tf.TensorShape]) -> None:
        # Glorot-uniform as each separate GateNN's Dense(hidden) would draw it: VarianceScaling's
        # fan_avg counts the fused layer's width, so its scale is corrected to fan_in + hidden.
        fan_in = sum(int(shape[-1]) for shape in parts(input_shape))
        fused = self.hidden_units * len(self.widths)
        initializer = tf.keras.initializers.VarianceScaling(
            scale=(fan_in + fused) / (fan_in + self.hidden_units), mode="fan_avg", distribution="uniform"
        )
        self.hidden = tf.keras.layers.Dense(
            fused, activation="relu", kernel_initializer=initializer, dtype=self.dtype_policy, name="hidden"
        )
        with tf.name_scope(self.hidden.name):  # as Keras would build it: variables named gates/hidden/...
            self.hidden.build(tf.TensorShape([None, fan_in]))
        super().build(input_shape)

    def call(self, inputs: tf.Tensor | list[tf.Tensor], training: bool | None = None) -> list[tf.Tensor]:
        """Computes every gate from the same input.

        Args:
            inputs: the gate input ``[batch, d]``, or its parts ``[batch, d_j]`` in order
                (``d = sum(d_j)``, as in ``build``).
            training: in training each part is multiplied by its own kernel rows; otherwise
                the parts are concatenated first.

        Returns:
            A list of ``len(widths)`` tensors, gate ``i`` of shape ``[batch, widths[i]]`` with
            values in ``(0, 2)``.
        """
        hidden = tf.split(self._hidden(parts(inputs), training), len(self.widths), axis=-1)
        return [2.0 * scale(h) for scale, h in zip(self.scales, hidden)]

    def _hidden(self, inputs: list[tf.Tensor], training: bool | None) -> tf.Tensor:
        """The fused hidden layer over the concatenated parts: one matmul per part in training."""
        if not training or len(inputs) == 1:
            return self.hidden(tf.concat(inputs, axis=-1))
        kernels = tf.split(self.hidden.kernel, [int(x.shape[-1]) for x in inputs], axis=0)
        product = tf.add_n([tf.matmul(x, kernel) for x, kernel in zip(inputs, kernels)])
        return self.hidden.activation(tf.nn.bias_add(product, self.hidden.bias))

    def get_config(self) -> dict:
        return {**super().get_config(), "widths": self.widths, "hidden_units": self.hidden_units}


def parts(inputs):
    """A layer input that may be one tensor (or shape) or a list of them, as a list. A plain list
    of dimensions such as ``(None, 10)`` is one shape."""
    listed = isinstance(inputs, (list, tuple)) and not (inputs and isinstance(inputs[0], (int, type(None))))
    return list(inputs) if listed else [inputs]


class GatedTower(tf.keras.layers.Layer):
    """DNN tower → one logit per row, optionally with a GateNN in front of every Dense layer.

    ``call(x, gate_input)``: for each Dense layer (hidden layers and the logit layer) the layer's
    input is multiplied element-wise by the gate computed from ``gate_input`` (a tensor or its
    parts, see ``GateNNs``). With ``gated=False`` it is the plain DNN baseline and ``gate_input``
    is ignored.

    Args:
        hidden_units: the widths of the hidden Dense layers (ReLU), in order; a one-unit logit
            layer follows them.
        gate_hidden: the hidden width of each GateNN.
        gated: PPNet (one gate in front of every Dense layer) or the plain DNN.
        dropout: the dropout rate after each hidden layer's ReLU; 0 adds no dropout layer.
        batch_norm: whether a ``BatchNormalization`` runs between each hidden Dense layer and its
            ReLU.
        output_bias: the logit layer's initial bias (``RankingModel`` passes the training CTR's
            log-odds, so training starts from the base rate).
        **kwargs: passed to ``tf.keras.layers.Layer``.
    """

    def __init__(
        self,
        hidden_units: list[int],
        gate_hidden: int = 64,
        gated: bool = True,
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_bias: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_units = list(hidden_units)
        self.gate_hidden = gate_hidden
        self.gated = gated
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.output_bias = output_bias
        policy = self.dtype_policy  # under mixed_bfloat16 the hidden layers compute in bfloat16
        self.dense = [
            tf.keras.layers.Dense(u, dtype=policy, name=f"dense_{i}") for i, u in enumerate(self.hidden_units)
        ]
        self.dense.append(  # the logit in float32 whatever the policy: the loss reads it
            tf.keras.layers.Dense(
                1, bias_initializer=tf.keras.initializers.Constant(output_bias), dtype="float32", name="logit"
            )
        )
        self.norms = [
            tf.keras.layers.BatchNormalization(dtype=policy, name=f"batch_norm_{i}") if batch_norm else None
            for i in range(len(self.hidden_units))
        ]
        self.drops = [tf.keras.layers.Dropout(dropout, dtype=policy) if dropout else None for _ in self.hidden_units]
        self.gates: GateNNs | None = None

    def build(self, input_shape: tf.TensorShape) -> None:
        if self.gated:  # gate i scales the input of Dense layer i
            self.gates = GateNNs(
                [int(input_shape[-1]), *self.hidden_units], self.gate_hidden, dtype=self.dtype_policy, name="gates"
            )
        super().build(input_shape)

    def call(
        self,
        inputs: tf.Tensor,
        gate_input: tf.Tensor | list[tf.Tensor] | None = None,
        training: bool | None = None,
        return_gates: bool = False,
    ):
        """Runs the tower, each Dense layer's input scaled by its gate when ``gated``.

        Args:
            inputs: the tower input ``[batch, d]``.
            gate_input: the gates' input ``[batch, g]`` or its parts ``[batch, g_j]``; ignored
                (may be None) when not ``gated``.
            training: enables dropout and batch statistics, and the gates' per-part products.
            return_gates: also return the gate values.

        Returns:
            The logits ``[batch]``; with ``return_gates``, ``(logits, gates)`` where ``gates`` is a
            list of one tensor per Dense layer, shaped ``[batch, d]``, ``[batch, hidden_units[0]]``,
            ..., ``[batch, hidden_units[-1]]`` (an empty list when not ``gated``).
        """
        x = inputs
        gate_values = self.gates(gate_input, training=training) if self.gated else []
        for i, dense in enumerate(self.dense):
            if self.gated:
                x = x * tf.cast(gate_values[i], x.dtype)
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
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "gate_hidden": self.gate_hidden,
            "gated": self.gated,
            "dropout": self.dropout,
            "batch_norm": self.batch_norm,
            "output_bias": self.output_bias,
        }


def flatten(rows: tf.Tensor) -> tf.Tensor:
    """``[batch, fields, dim]`` → ``[batch, fields * dim]``, the fields' embeddings side by side."""
    return tf.reshape(rows, [-1, rows.shape[1] * rows.shape[2]])


class LogitTransfer(tf.keras.layers.Layer):
    """A task's logit plus a learned multiple of an earlier task's logit under ``stop_gradient``
    (``[[tasks]] builds_on``): a long view is nearly always a click, so long view can start from
    click's prediction without training click's parts.

    The multiple starts at 0 (the task's own tower alone, as without the transfer). The variable
    holds it divided by ``speedup``: Adam moves a variable by about the learning rate per step,
    whatever its gradient, and the multiple should reach its value (docs/multitask.md) within a
    few hundred steps rather than a few thousand.

    Args:
        speedup: the multiple per unit of the variable.
        **kwargs: passed to ``tf.keras.layers.Layer`` (the layer computes in float32, as logits do).
    """

    def __init__(self, speedup: float = 10.0, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.speedup = float(speedup)

    def build(self, input_shape) -> None:
        self.scale = self.add_weight(name="scale", shape=[], initializer="zeros")
        super().build(input_shape)

    def call(self, logit: tf.Tensor, base: tf.Tensor) -> tf.Tensor:
        """``logit + multiple * stop_gradient(base)``, both ``[batch]``."""
        return logit + self.speedup * self.scale * tf.stop_gradient(base)

    def get_config(self) -> dict:
        return {**super().get_config(), "speedup": self.speedup}


class StoppedTowerInput(tf.keras.layers.Layer):
    """The gates' input in ``shared`` mode: the tower's whole input under ``stop_gradient``, and the
    personalisation ids' gate-only embeddings.

    The gates read everything the tower reads but cannot move it; the ids train through the gates
    alone. The two parts stay apart, so ``GateNNs`` computes no gradient for the stopped one.
    """

    def call(self, tower_input, tower_rows, numeric, id_rows) -> list[tf.Tensor]:
        """The gates' input parts.

        Args:
            tower_input: ``[batch, d]``, the tower's input.
            tower_rows: unused (``StoppedIdFields`` reads them).
            numeric: unused (already in ``tower_input``).
            id_rows: the ids' gate-only embedding rows, ``[batch, fields_g, dim_g]`` per table group.

        Returns:
            ``[stop_gradient(tower_input) [batch, d], ids [batch, sum(fields_g * dim_g)]]``.
        """
        return [tf.stop_gradient(tower_input), tf.concat([flatten(rows) for rows in id_rows], axis=-1)]


class StoppedIdFields(tf.keras.layers.Layer):
    """The gates' input in ``ids`` mode: the tower's own embeddings and numerics, with
    ``stop_gradient`` on the personalisation-id fields only.

    The gates share the tower's tables and may train them, except the ids', which only the
    tower trains.

    Args:
        stopped: per table group of the tower, one flag per field: stop that field's gradient.
    """

    def __init__(self, stopped: list[list[bool]], **kwargs):
        super().__init__(**kwargs)
        self.stopped = [[bool(flag) for flag in group] for group in stopped]

    def call(self, tower_input, tower_rows, numeric, id_rows) -> list[tf.Tensor]:
        """The gates' one input part.

        Args:
            tower_input: unused (``StoppedTowerInput`` reads it).
            tower_rows: the tower's embedding rows, ``[batch, fields_g, dim_g]`` per table group,
                in the order of ``stopped``.
            numeric: a list of zero or one ``[batch, n]`` tensors of normalised numerics.
            id_rows: unused (ids have no gate-only tables in this mode).

        Returns:
            ``[[batch, d]]``: the tower's input with the id fields' gradient stopped.
        """
        rows = [
            tf.where(tf.constant([[[flag] for flag in flags]]), tf.stop_gradient(group), group)
            for flags, group in zip(self.stopped, tower_rows, strict=True)
        ]
        return [tf.concat([flatten(group) for group in rows] + list(numeric), axis=-1)]

    def get_config(self) -> dict:
        return {**super().get_config(), "stopped": self.stopped}


class MixtureOfExperts(tf.keras.layers.Layer):
    """MMoE (Ma et al., KDD 2018), the multi-task baseline PEPNet's paper compares with: shared
    expert MLPs, and per task a softmax gate over the experts that reads the same input.

    Args:
        experts: how many expert MLPs.
        units: each expert's hidden widths (ReLU), in order.
        tasks: how many tasks, i.e. mixtures.
        **kwargs: passed to ``tf.keras.layers.Layer``.
    """

    def __init__(self, experts: int, units: list[int], tasks: int, **kwargs):
        super().__init__(**kwargs)
        self.experts, self.units, self.tasks = int(experts), [int(u) for u in units], int(tasks)
        self.expert_layers = [
            [
                tf.keras.layers.Dense(u, activation="relu", dtype=self.dtype_policy, name=f"expert_{e}_{i}")
                for i, u in enumerate(self.units)
            ]
            for e in range(self.experts)
        ]
        self.gates = [
            tf.keras.layers.Dense(self.experts, activation="softmax", dtype=self.dtype_policy, name=f"gate_{t}")
            for t in range(tasks)
        ]

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> list[tf.Tensor]:
        """Each task's mixture of the experts.

        Args:
            inputs: ``[batch, d]``, read by every expert and every gate.

        Returns:
            ``tasks`` tensors ``[batch, units[-1]]``: task ``t``'s gate-weighted sum of the experts.
        """
        outputs = []
        for layers in self.expert_layers:
            x = inputs
            for layer in layers:
                x = layer(x)
            outputs.append(x)
        experts = tf.stack(outputs, axis=1)  # [batch, experts, units[-1]]
        return [tf.einsum("be,bed->bd", gate(inputs), experts) for gate in self.gates]

    def get_config(self) -> dict:
        return {**super().get_config(), "experts": self.experts, "units": self.units, "tasks": self.tasks}
