"""The ppnet benchmark: quality, training speed, memory and serving latency → one JSON + markdown tables.

``python -m bench`` (``make bench``) prepares the KuaiRand slice (``--kuairand``, or takes ``--data``;
with ``--synthetic`` also the embedded synthetic log) and measures on each log:

* quality (``bench.quality``): PPNet (as configured, in float32 and in bfloat16, ``ppnet`` and
  ``ppnet_bf16``; shared gates with the ids also in the tower; ``ids`` gates), the DNN (with its
  own tuning where a config's differs, ``BASELINE_TUNING``) and a one-hot logistic-regression
  floor, over ``--seeds`` seeds: mean and std of validation auc, gauc, logloss;
* training speed (``bench.speed``): the steady-state examples/sec of the first PPNet run in each
  precision (``train.precision`` float32 and mixed_bfloat16; bfloat16 runs even where the CPU
  emulates it, and the report says so), the input pipeline alone, and the training FLOP/s (matmul
  FLOPs counted in the built model's traced training step) as a fraction of this machine's dense
  float32 and bfloat16 matmul peaks, both measured in the run; the JSON records what
  ``train.precision = "auto"`` picks here and why;
* memory (``bench.speed``): peak RSS of ``ppnet train`` subprocesses on the log and on the log
  repeated 4x (``bench/peak_rss.py``), and of the bfloat16 run;
* serving (``bench.serving``): the export served as a ranking service sees it, one user's request
  of 1, 64, 256 and 1024 candidates (the rows share the user's columns, those constant within every
  user in the validation rows, and vary the rest): p50/p99 latency and rows/sec of
  ``serving_default`` (one tensor per column) and ``serve_examples`` (serialized tf.Examples), in a
  plain TensorFlow subprocess (``bench/serving_worker.py``), beside the floor of the model's own
  arithmetic (its tower and gates alone, frozen as in the export, fed their input tensors) and the
  FLOP bound (forward FLOPs of the request's rows at the float32 matmul peak of that subprocess,
  which runs with TensorFlow's default threads); and two floors of
  TF's call overhead (a one-input multiply, and a trivial model taking the export's own column
  inputs); with TF's default oneDNN kernels and without (``TF_ENABLE_ONEDNN_OPTS=0``).
* daily retraining (``bench.replay``), on a log of at least five day files: the last three days
  (one in ``--smoke``) replayed with ``ppnet replay`` against the base unchanged and against
  retraining from scratch, per model mean AUC, gAUC, logloss over the days and seeds, and the time
  of a day's continuation against a retrain; ``--skip replay`` leaves it out.
* the multi-task leaderboard (``bench.multitask``), where the log's config has a multi-task config
  beside it (``kuairand_multitask.toml``, ``multitask.toml``): per task, the single-task PPNet trained
  on that label alone against the multi-task ``dnn``, ``mmoe``, ``ppnet`` and ``pepnet``, over the
  same seeds (mean and std of auc, gauc, logloss), and each model's training examples/sec, run last
  so nothing else of the bench trains meanwhile. ``--only multitask`` runs this section alone,
  ``--skip multitask`` all but it (``--skip`` repeats).

Machine, versions, config and every figure go to ``bench/results/<timestamp>.json`` (``--results``)
and markdown tables are printed (``bench.report``). Scratch files live in ``bench/tmp/`` and are
removed after a successful run. ``--smoke`` runs all of it on a tiny synthetic log with a tiny
model in about a minute (its multi-task leaderboard trains seven tiny models).

``python -m bench.profile`` (``make profile``) is the other measurement tool: where a training
step's and a request's (one row, or ``--rows``) time goes, by TensorFlow op type. ``python -m
bench.user_once`` is an experiment: whether computing the user's share of the gates' first matmul
once per ranking request would pay (it changes nothing in the export).

This package lives beside ``ppnet`` in the repository, not in it: it is not installed, and it runs
from the repository root. ``bench/peak_rss.py`` and ``bench/serving_worker.py`` are standalone
scripts run by other interpreters; nothing here imports them. ``bench/matmul_peak.py`` needs
TensorFlow alone, so the serving worker imports it too.
"""

import ppnet  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any bench module loads TensorFlow)
from ppnet.console import load_tensorflow

load_tensorflow()  # quietly: the bench prints its own progress and tables
