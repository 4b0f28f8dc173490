"""Parquet click logs → validated, shuffled, batched ``tf.data`` pipelines, streaming.

One room per job; import the submodule you need (nothing is re-exported here):

* ``schema`` (no TensorFlow): input column kinds and null ids, file resolution, schema checks of
  every file against the config, arrow columns → numpy arrays of the input kinds;
* ``split`` (no TensorFlow): ``Split`` (files, row filter, row groups; streamed record batch by
  record batch), the train/valid split, worker shards, the label check;
* ``pipeline``: the block shuffler (numpy batches), ``EpochCursor``, the input signature and the
  ``tf.data`` dataset;
* ``tfrecord``: shards written as TFRecord for parameter-server workers, ``tf.Example`` encoding.

Each room imports only the ones before it: schema → split → pipeline → tfrecord.
"""
