"""One test per shim in ``ppnet.tf_private``: each private TensorFlow/Keras name still does its job."""

import numpy as np
import pytest
import tensorflow as tf

from ppnet.tf_private import (
    SparseGradientsAsIs,
    adam_moment_keys,
    adam_moments,
    called_graph,
    checkpoint_keys,
    freeze,
    mark_last_step,
    resume_counters,
    sharded_container,
    skip_log_sync,
    take_backup,
    xplane_pb2,
)


def tiny_model() -> tf.keras.Model:
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(1,))])
    model.compile(optimizer="sgd", loss="mse")
    return model


def started_backup(model: tf.keras.Model, backup_dir, save_freq="epoch") -> tf.keras.callbacks.BackupAndRestore:
    backup = tf.keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=save_freq, delete_checkpoint=False)
    backup.set_model(model)
    backup.on_train_begin()
    return backup


def test_freeze_turns_the_variables_read_into_constants():
    weight = tf.Variable([[2.0]])
    traced = tf.function(lambda x: tf.matmul(x, weight)).get_concrete_function(tf.TensorSpec([None, 1]))
    frozen = freeze(traced)
    weight.assign([[5.0]])
    assert not frozen.variables and traced.variables
    assert (
        tf.nest.flatten(frozen(tf.constant([[3.0]])))[0].numpy().item() == 6.0
    )  # the value when frozen, not the variable's now


def test_resume_counters_reads_the_epoch_a_fit_backed_up(tmp_path):
    model = tiny_model()
    fitted = tf.keras.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)
    model.fit(np.ones((8, 1)), np.ones((8, 1)), batch_size=4, epochs=2, verbose=0, callbacks=[fitted])
    assert resume_counters(started_backup(tiny_model(), tmp_path), steps_per_epoch=2) == (2, 0)
    assert resume_counters(started_backup(tiny_model(), tmp_path / "fresh"), steps_per_epoch=2) == (0, 0)


def test_take_backup_saves_the_counters_of_the_epoch_it_ends(tmp_path):
    class NoEpochBackup(tf.keras.callbacks.BackupAndRestore):
        def on_epoch_end(self, epoch, logs=None):
            if self.take:
                take_backup(self)

    for take, resumes_at in ((False, 0), (True, 3)):
        backup = NoEpochBackup(str(tmp_path / str(take)), delete_checkpoint=False)
        backup.take = take
        tiny_model().fit(np.ones((8, 1)), np.ones((8, 1)), batch_size=4, epochs=3, verbose=0, callbacks=[backup])
        assert resume_counters(started_backup(tiny_model(), tmp_path / str(take)), steps_per_epoch=2) == (resumes_at, 0)


def test_mark_last_step_makes_a_backup_resume_after_the_last_step_of_a_call(tmp_path):
    class CrashAtStep(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                raise KeyboardInterrupt  # a crash right after the call of steps 2 and 3 is backed up

    class Backup(tf.keras.callbacks.BackupAndRestore):
        def on_train_batch_end(self, batch, logs=None):
            if self.mark:
                mark_last_step(self, batch)
            super().on_train_batch_end(batch, logs)

    for mark, resumes_at in ((False, 3), (True, 4)):  # Keras alone records the call's first step, 2
        model = tiny_model()
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
        backup = Backup(str(tmp_path / str(mark)), save_freq=1, delete_checkpoint=False)
        backup.mark = mark
        with pytest.raises(KeyboardInterrupt):
            model.fit(np.ones((8, 1)), np.ones((8, 1)), batch_size=1, verbose=0, callbacks=[backup, CrashAtStep()])
        restarted = started_backup(tiny_model(), tmp_path / str(mark), save_freq=1)
        assert resume_counters(restarted, steps_per_epoch=8) == (0, resumes_at)


def test_skip_log_sync_lets_keras_skip_waiting_for_batch_logs():
    class Counter(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    waits, skips = Counter(), Counter()
    skip_log_sync(skips)
    assert not tf.keras.callbacks.CallbackList([waits])._batch_hooks_support_tf_logs
    assert tf.keras.callbacks.CallbackList([skips])._batch_hooks_support_tf_logs


def test_adam_moments_are_the_slots_adam_updates():
    variable = tf.Variable([1.0, 2.0])
    adam = tf.keras.optimizers.Adam(beta_1=0.9, beta_2=0.999)
    adam.apply_gradients([(tf.constant([0.5, -1.0]), variable)])
    m, v = adam_moments(adam, variable)
    np.testing.assert_allclose(m.numpy(), [0.05, -0.1], rtol=1e-6)
    np.testing.assert_allclose(v.numpy(), [0.00025, 0.001], rtol=1e-5)


def saved_two_layer_model(path) -> tf.keras.Model:
    """A trained two-layer model with Adam, saved with ``save_weights`` (as ppnet's checkpoints are)."""
    model = tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(2,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.1), loss="mse")
    model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    model.save_weights(str(path))
    return model


def test_checkpoint_keys_name_each_variable_as_restoring_finds_it(tmp_path):
    saved = saved_two_layer_model(tmp_path / "ckpt")
    fresh = tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(2,)), tf.keras.layers.Dense(1)])
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt"))
    keys = checkpoint_keys(fresh, reader)
    for new, old in zip(fresh.weights, saved.weights, strict=True):
        np.testing.assert_array_equal(reader.get_tensor(keys[id(new)]), old.numpy())


def test_adam_moment_keys_hold_each_trainable_variables_moments(tmp_path):
    saved = saved_two_layer_model(tmp_path / "ckpt")
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt"))
    for index, variable in enumerate(saved.trainable_variables):
        for key, moment in zip(adam_moment_keys(index), adam_moments(saved.optimizer, variable), strict=True):
            np.testing.assert_array_equal(reader.get_tensor(key), moment.numpy())


def test_sharded_container_is_the_sharded_variable_a_shard_belongs_to():
    from tensorflow.python.distribute.sharded_variable import ShardedVariable  # what a partitioner makes

    parts = [tf.Variable(tf.zeros([2, 3])), tf.Variable(tf.ones([1, 3]))]
    whole = ShardedVariable(parts)
    assert all(sharded_container(part) is whole for part in parts)
    assert sharded_container(tf.Variable(1.0)) is None


def test_sparse_gradients_reach_update_step_with_duplicate_rows_unmerged():
    seen = []

    class Recording(SparseGradientsAsIs, tf.keras.optimizers.SGD):
        def update_step(self, gradient, variable):
            seen.append(gradient.indices.numpy().tolist())

    assert hasattr(tf.keras.optimizers.SGD, "_deduplicate_sparse_grad")  # still a hook Keras calls
    variable = tf.Variable(tf.zeros([4, 2]))
    gradient = tf.IndexedSlices(tf.ones([3, 2]), tf.constant([1, 1, 3]), tf.constant([4, 2]))
    Recording().apply_gradients([(gradient, variable)])
    assert seen == [[1, 1, 3]]


def test_xplane_proto_parses_a_profile_space():
    space = xplane_pb2.XSpace()
    space.planes.add(name="/host:CPU")
    assert xplane_pb2.XSpace.FromString(space.SerializeToString()).planes[0].name == "/host:CPU"


def test_called_graph_finds_the_body_of_a_nested_function():
    inner = tf.function(lambda x: tf.matmul(x, x))
    outer = tf.function(lambda x: inner(x) + 1.0).get_concrete_function(tf.TensorSpec([2, 2]))
    calls = [op for op in outer.graph.get_operations() if op.node_def.attr["f"].func.name]
    assert calls, "the outer graph calls the inner function"
    body = called_graph(outer.graph, calls[0].node_def.attr["f"].func.name)
    assert "MatMul" in [op.type for op in body.get_operations()]
    assert called_graph(outer.graph, "no_such_function") is None
