"""Training speed and memory: throughput of training and of the input pipeline alone, the FLOPs of
an example counted in the built model's traced graphs, and peak RSS of training processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from bench.harness import TrainProcess
from ppnet.config import Config
from ppnet.data.pipeline import make_dataset
from ppnet.data.schema import input_kinds
from ppnet.data.split import Split, make_splits
from ppnet.model import RankingModel, dummy_batch
from ppnet.precision import BFLOAT16, FLOAT32
from ppnet.tf_private import called_graph

MATMULS = ("MatMul", "_FusedMatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
FLOP_BATCH = 16  # rows of the traced batch; any size gives the same count per example


# --- FLOPs ---------------------------------------------------------------------------------------


def flops_per_example(model: RankingModel, batch: int = FLOP_BATCH) -> dict[str, int | float]:
    """Forward and training matmul FLOPs per example of a built ranking model: ``2 * m * k * n`` for
    every matrix product in the graphs TensorFlow traces for a batch of ``batch`` rows.

    The forward pass is the model's inference call; the training step is the forward pass in
    training mode and the gradient of the loss (``compute_loss`` plus the layers' regularisation
    losses, as ``tfrs.Model.train_step`` takes it) with respect to every trainable variable. So any
    tower or gate layout is counted as it is built, and a product the model does not compute (the
    gates' input gradient of their ``stop_gradient`` part, see ``GateNNs``) is not counted.
    Embedding lookups, activations and element-wise products are not matmuls and are ignored.
    """
    features = dummy_batch(model.stats, rows=batch)
    labels = {column: tf.zeros([batch]) for column in model.config.target_columns}

    def training_step(features: dict[str, tf.Tensor], labels: dict[str, tf.Tensor]) -> list:
        with tf.GradientTape() as tape:
            loss = model.compute_loss((features, labels), training=True)
            if model.losses:
                loss += tf.add_n(model.losses)
        return tape.gradient(loss, model.trainable_variables)

    forward = graph_flops(lambda f: model(f, training=False), features)
    train = graph_flops(training_step, features, labels)
    return {"forward": per_example(forward, batch), "train": per_example(train, batch)}


def graph_flops(function: Callable, *args) -> int:
    """Matmul FLOPs of one call of ``function`` on ``args``, from its traced graph (not run)."""
    graph = tf.function(function).get_concrete_function(*args).graph
    return sum(matmul_flops(op) for op in graph_ops(graph) if op.type in MATMULS)


def graph_ops(graph: tf.Graph, seen: set[str] | None = None) -> Iterator[tf.Operation]:
    """Every op of ``graph`` and, recursively, of the functions its ops call (a function-call op's
    body, a ``tf.function`` within or its gradient; a loop body counts once), each function once."""
    seen = set() if seen is None else seen
    for op in graph.get_operations():
        yield op
        for attr in op.node_def.attr.values():
            names = [attr.func.name] if attr.HasField("func") else [f.name for f in attr.list.func]
            for name in names:
                if name and name not in seen:
                    seen.add(name)
                    body = called_graph(graph, name)
                    if body is None:
                        raise ValueError(f"op {op.name} calls {name}, whose graph is not available to count")
                    yield from graph_ops(body, seen)


def matmul_flops(op: tf.Operation) -> int:
    """``2 * m * k * n`` (times the batch of a batched product) of one matmul op, from its inputs' shapes."""
    a, b = (x.shape for x in op.inputs[:2])
    if not (a.is_fully_defined() and b.is_fully_defined()):
        raise ValueError(f"{op.type} {op.name}: input shapes {a} and {b} not known when traced")
    if op.type.startswith("BatchMatMul"):
        flip_a, flip_b = op.get_attr("adj_x"), op.get_attr("adj_y")
        batch = int(np.prod(tf.broadcast_static_shape(a[:-2], b[:-2]).as_list(), dtype=np.int64))
    else:
        flip_a, flip_b, batch = op.get_attr("transpose_a"), op.get_attr("transpose_b"), 1
    m, k = (a[-1], a[-2]) if flip_a else (a[-2], a[-1])
    n = b[-2] if flip_b else b[-1]
    return 2 * batch * m * k * n


def per_example(flops: int, batch: int) -> int | float:
    """FLOPs per row: an integer when every product scales with the batch, as the model's do."""
    return flops // batch if flops % batch == 0 else flops / batch


# --- throughput ----------------------------------------------------------------------------------


def training_dataset(config: Config, data_path: str) -> tuple[Split, dict[str, str], tf.data.Dataset]:
    """The training split of ``data_path``, its input kinds, and the batches ``ppnet train`` reads from it."""
    train_split, _ = make_splits(config, data_path, None)
    kinds = input_kinds(config, list(train_split.files))
    dataset = make_dataset(
        train_split,
        kinds,
        config.target_columns,
        config.train.batch_size,
        config.data.shuffle_buffer,
        config.train.seed,
    )
    return train_split, kinds, dataset


def input_pipeline_rate(config: Config, data_path: str) -> float:
    """Examples/sec of one epoch of the training ``make_dataset`` alone, after its first batch."""
    _, _, dataset = training_dataset(config, data_path)
    batches = iter(dataset)
    next(batches)
    rows, start = 0, time.perf_counter()
    for _, targets in batches:
        rows += int(targets[config.data.label].shape[0])
    return rows / (time.perf_counter() - start)


def speed(
    model: RankingModel, config: Config, data_path: str, rates: dict[str, float], peaks: dict[str, float], native: bool
) -> dict:
    """Input-pipeline throughput, the FLOPs of an example, the two matmul peaks, and per precision
    (``rates``: training examples/sec by Keras policy name) the training FLOP/s and its utilisation
    of each peak; ``native``: whether bfloat16 is native here (else its figures are emulated).

    Both precisions run the same matmuls, so one count (``model``'s, built in float32) serves both.
    Each precision's FLOP/s is set against both peaks: bfloat16 can beat the float32 peak.
    """
    flops = flops_per_example(model)
    return {
        "input_examples_per_sec": input_pipeline_rate(config, data_path),
        "forward_flops_per_example": flops["forward"],
        "train_flops_per_example": flops["train"],
        **peaks,
        "training": {policy: training_figures(flops["train"], rate, peaks) for policy, rate in rates.items()},
        "bf16_speedup": rates[BFLOAT16] / rates[FLOAT32],
        "bf16_emulated": not native,
    }


def training_figures(flops: int | float, rate: float, peaks: dict[str, float]) -> dict[str, float]:
    """One precision's training examples/sec, FLOP/s, and FLOP/s as a fraction of each matmul peak."""
    return {
        "examples_per_sec": rate,
        "flops_per_sec": flops * rate,
        "utilisation_of_float32_peak": flops * rate / peaks["matmul_peak_flops_per_sec"],
        "utilisation_of_bf16_peak": flops * rate / peaks["bf16_matmul_peak_flops_per_sec"],
    }


# --- memory --------------------------------------------------------------------------------------


def memory(rss_1x: int, metrics_1x: dict, run_4x: TrainProcess, rss_bf16: int) -> dict:
    """Peak RSS and training rows on the log and on the log repeated 4x, the 4x / 1x RSS ratio, and
    the peak RSS of the bfloat16 run on the log (which also holds a float32 copy to score with)."""
    rss_4x, metrics_4x = run_4x.wait()
    return {
        "peak_rss_1x_bytes": rss_1x,
        "train_rows_1x": metrics_1x["train_rows"],
        "peak_rss_4x_bytes": rss_4x,
        "train_rows_4x": metrics_4x["train_rows"],
        "ratio_4x_1x": rss_4x / rss_1x,
        "peak_rss_1x_bf16_bytes": rss_bf16,
    }
