"""Optimizers for ranking models, by ``train.optimizer`` name: Adam on TensorFlow's fused kernel,
Adam that updates only the embedding rows a batch used, and Keras' Adagrad and SGD."""

from __future__ import annotations

import tensorflow as tf

from ppnet.tf_private import SparseGradientsAsIs, adam_moments


class FusedAdam(SparseGradientsAsIs, tf.keras.optimizers.Adam):
    """Keras' Adam computed by TensorFlow's fused ``ResourceApplyAdam`` kernel (``train.optimizer = "adam"``).

    The same update as ``tf.keras.optimizers.Adam`` (``m``, ``v`` and bias correction; sparse
    embedding gradients applied densely, as Keras does), but one pass over each variable and its
    two moments instead of a chain of element-wise ops, each a pass of its own: Keras' Adam had
    been a large share of a training step's CPU time (docs/performance.md). A sparse gradient
    becomes dense only in ``update_step``, which runs where the variable lives (on its parameter
    server), so workers send only the rows they used.

    Args:
        **kwargs: the arguments of ``tf.keras.optimizers.Adam`` (``learning_rate``, ``beta_1``,
            ``beta_2``, ``epsilon``, ...); its ``amsgrad`` variant is not implemented here.
    """

    def update_step(self, gradient, variable):
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        m, v = adam_moments(self, variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=m.handle,
            v=v.handle,
            beta1_power=beta_1**step,
            beta2_power=beta_2**step,
            lr=tf.cast(self.learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.convert_to_tensor(gradient),
        )  # duplicate rows of a sparse gradient are summed


class LazyAdam(FusedAdam):
    """Adam that updates only the embedding rows a batch used (``train.optimizer = "lazy_adam"``).

    Keras' Adam decays the moments of every row of a table on every step: a full pass over each
    table per step, which dominates training once hashed id tables have millions of rows. Here
    rows a batch did not touch keep their moments (as TF Addons' LazyAdam), the usual trade-off
    for sparse recommender embeddings. Dense weights are updated exactly as by Adam.

    Args:
        **kwargs: the arguments of ``FusedAdam``.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - beta_2**step) / (1 - beta_1**step)
        m, v = adam_moments(self, variable)
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grad)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


OPTIMIZERS: dict[str, type[tf.keras.optimizers.Optimizer]] = {
    "adam": FusedAdam,
    "lazy_adam": LazyAdam,
    "adagrad": tf.keras.optimizers.Adagrad,
    "sgd": tf.keras.optimizers.SGD,
}
