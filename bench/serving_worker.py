"""Serving latency of the export and its floors, measured as TF Serving would load them.

Run by ``bench.serving`` in a separate interpreter (``python -P serving_worker.py --out OUT ...``):
TensorFlow alone, no ppnet and no ``TF_USE_LEGACY_KERAS``, with ``TF_ENABLE_ONEDNN_OPTS`` as the
caller set it. It loads each SavedModel, calls one signature on the first ``n`` rows of its inputs
for every batch size ``n``, and writes p50/p99 latency and rows/sec per model and batch size to
``--out`` (JSON), with this process's float32 matmul peak and what the environment was
(``ppnet_imported``, ``tf_use_legacy_keras``, ``tf_enable_onednn_opts``).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

# The bench's directory after the standard library's (its profile.py must not shadow theirs), for
# the one bench module that needs TensorFlow alone.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import matmul_peak_flops

WARMUP_CALLS = 10


def latency(serve, inputs: dict[str, tf.Tensor], repeats: int) -> dict:
    """p50/p99 of one call (outputs fetched) after warm-up calls, and rows/sec over all repeats."""
    for _ in range(WARMUP_CALLS):
        serve(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [value.numpy() for value in serve(**inputs).values()]
        times.append(time.perf_counter() - start)
    rows = int(next(iter(inputs.values())).shape[0])
    return {
        "rows": rows,
        "repeats": repeats,
        "p50_ms": 1e3 * float(np.percentile(times, 50)),
        "p99_ms": 1e3 * float(np.percentile(times, 99)),
        "rows_per_sec": rows * repeats / float(np.sum(times)),
    }


def bench(
    model_dir: str, columns: dict[str, np.ndarray], repeats: dict[int, int], signature: str = "serving_default"
) -> dict:
    """Latency of ``signature`` of the SavedModel in ``model_dir`` per batch size (its first rows)."""
    serve = tf.saved_model.load(model_dir).signatures[signature]
    return {str(n): latency(serve, {k: tf.constant(v[:n]) for k, v in columns.items()}, r) for n, r in repeats.items()}


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--rows", required=True, help=".npz of the export's column inputs")
    cli.add_argument("--examples", required=True, help="TFRecord file of the same rows as serialized tf.Examples")
    cli.add_argument("--model", required=True, help="the export (serving_default and serve_examples)")
    cli.add_argument("--trivial", required=True, help="SavedModel: y = 2 x on one input x")
    cli.add_argument("--trivial-columns", required=True, help="SavedModel: a trivial model on the column inputs")
    cli.add_argument("--tower", required=True, help="SavedModel: the frozen tower and gates alone")
    cli.add_argument("--tower-rows", required=True, help=".npz of the tower's inputs x0, x1, ...")
    cli.add_argument("--repeats", required=True, help='JSON {"batch size": timed calls}')
    cli.add_argument("--out", required=True, help="JSON file for the figures")
    return cli


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    repeats = {int(n): r for n, r in json.loads(args.repeats).items()}
    rows = dict(np.load(args.rows))
    examples = {"examples": np.array([r.numpy() for r in tf.data.TFRecordDataset(args.examples)], dtype=object)}
    trivial = {"x": np.linspace(0.0, 1.0, max(repeats), dtype=np.float32)}
    result = {
        "model": bench(args.model, rows, repeats),
        "model_examples": bench(args.model, examples, repeats, "serve_examples"),
        "trivial": bench(args.trivial, trivial, repeats),
        "trivial_columns": bench(args.trivial_columns, rows, repeats),
        "tower": bench(args.tower, dict(np.load(args.tower_rows)), repeats),
        # The FLOP bound's peak, from this process: its threads and kernels are the requests'.
        "matmul_peak_flops_per_sec": matmul_peak_flops(),
        "ppnet_imported": "ppnet" in sys.modules,
        "tf_use_legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
