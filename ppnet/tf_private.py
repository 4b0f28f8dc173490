"""Every private TensorFlow and Keras name ppnet relies on, behind one door.

Each shim exists because no public API does its job (its docstring says which job). A TensorFlow
or tf-keras upgrade that moves one of these names breaks here and in ``tests/test_tf_private.py``
(one test per shim), not somewhere in training, export or the benchmark.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
from tensorflow.tsl.profiler.protobuf import xplane_pb2

__all__ = [
    "SparseGradientsAsIs",
    "adam_moment_keys",
    "adam_moments",
    "called_graph",
    "checkpoint_keys",
    "freeze",
    "resume_counters",
    "sharded_container",
    "skip_log_sync",
    "take_backup",
    "xplane_pb2",
]


def freeze(function: tf.types.experimental.ConcreteFunction) -> tf.types.experimental.ConcreteFunction:
    """``function`` with the variables it reads turned into graph constants.

    TensorFlow 2 has no public way to freeze a concrete function; the export needs one so that
    oneDNN lays each weight matrix out once instead of on every call.
    """
    return convert_variables_to_constants_v2(function)


def called_graph(graph: tf.Graph, name: str) -> tf.Graph | None:
    """The graph of function ``name`` that an op of ``graph`` calls (a ``tf.function`` inside
    another, or a gradient function), or ``None`` if it is not registered there.

    Graphs list their own ops only; counting everything a traced step computes (the bench's FLOPs)
    has to follow function-call ops into their bodies, which only ``Graph._get_function`` finds.
    """
    function = graph._get_function(name)
    return None if function is None else function.graph


def resume_counters(backup: tf.keras.callbacks.BackupAndRestore, steps_per_epoch: int) -> tuple[int, int]:
    """The (epoch, step) a restored ``BackupAndRestore`` resumes at; (0, 0) for a fresh run.

    Keras keeps them in the callback's private training state and uses them only to skip epochs;
    ppnet also needs them to skip the batches of a resumed epoch and to know the finished epochs.
    Call after ``backup.on_train_begin`` (which restores the state).
    """
    return backup._training_state.maybe_load_initial_counters_from_ckpt(steps_per_epoch, 0, mode="train")


def mark_last_step(backup: tf.keras.callbacks.BackupAndRestore, step: int) -> None:
    """Record ``step`` as the last one trained: a backup taken now resumes at the step after it.

    Keras records the step from its ``on_train_batch_begin``, the first step of a call of the train
    function, which is the last one only when a call is one step (``steps_per_execution``).
    """
    backup._training_state._ckpt_saved_batch.assign(step)


def take_backup(backup: tf.keras.callbacks.BackupAndRestore) -> None:
    """Back up now, with the epoch and step counters Keras has set during the epoch (after its last
    step they say: resume at the next epoch).

    Keras backs up only from its own hooks; ppnet backs an epoch up after it is scored.
    """
    backup._backup(epoch=None)  # Keras' back_up ignores the argument: its counters are variables


def skip_log_sync(callback: tf.keras.callbacks.Callback) -> None:
    """Tell Keras that ``callback`` never reads the values in its batch logs, so ``fit`` need not
    wait for each step's results before calling it (Keras' ``_supports_tf_logs``)."""
    callback._supports_tf_logs = True


def adam_moments(optimizer: tf.keras.optimizers.Adam, variable: tf.Variable) -> tuple[tf.Variable, tf.Variable]:
    """Adam's first and second moment slots of ``variable`` (tf-keras keeps them in private lists)."""
    slot = optimizer._index_dict[optimizer._var_key(variable)]
    return optimizer._momentums[slot], optimizer._velocities[slot]


def adam_moment_keys(index: int) -> tuple[str, str]:
    """The checkpoint keys (``model.save_weights``) of Adam's first and second moments of the
    model's ``index``-th trainable variable: tf-keras' Adam tracks its step count, then each
    trainable variable's ``m`` and ``v`` in order, in its private ``_variables`` list."""
    first = 1 + 2 * index
    return tuple(f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE" for i in (first, first + 1))


def checkpoint_keys(root: tf.Module, reader: tf.train.CheckpointReader) -> dict[int, str]:
    """Each variable of ``root`` (by ``id``) that the checkpoint read by ``reader`` holds → its key,
    found as restoring would find it: the checkpoint's object graph followed from ``root`` child by
    child name. The graph's proto has no public reader."""
    graph = TrackableObjectGraph.FromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    keys, stack, seen = {}, [(0, root)], set()
    while stack:
        node_id, obj = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = graph.nodes[node_id]
        keys.update({id(obj): a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"})
        children = tf.train.TrackableView.children(obj)
        stack.extend(
            (child.node_id, children[child.local_name]) for child in node.children if child.local_name in children
        )
    return keys


def sharded_container(variable: tf.Variable):
    """The ``ShardedVariable`` that ``variable`` is one shard of (a parameter-server partitioner
    splits every variable above its size: tables, and large dense kernels too), or ``None``.
    TensorFlow keeps that link only as a private weak reference on the shard."""
    container = getattr(variable, "_sharded_container", None)
    return container() if container is not None else None


class SparseGradientsAsIs:
    """Optimizer mixin: hand sparse gradients to ``update_step`` with duplicate rows unmerged.

    Keras merges them with a ``unique`` and a segment sum on every step, before the optimizer's
    own update; ppnet's Adam kernels sum duplicate rows themselves. List it before the Keras
    optimizer among the bases.
    """

    def _deduplicate_sparse_grad(self, grads):
        return list(grads)
