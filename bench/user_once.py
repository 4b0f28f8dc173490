"""An experiment, not part of ``make bench``: does computing the user's share of PPNet's work once
per ranking request pay? (issue 16, item 3.)

In a request of one user and N candidates, part of the gates' input is the same on every row: the
embeddings and numerics of the user's columns, and the user id's own gate embedding. The gates'
fused first layer (``GateNNs.hidden``) multiplies that part by its kernel rows on every row; it
could be multiplied once per request and broadcast. Nothing else of the forward pass depends on
the user alone: the tower's own layers read their input scaled by the gates, which depend on the
candidate.

``python -m bench.user_once --run RUN_DIR --data PATH`` builds one user's ranking requests from the
run's validation rows as the bench does (``bench.serving``), finds the gate-input dims that are
constant across the largest request (the user's share), and times, interleaved in one process,
three versions of the run's tower and gates with frozen weights on the same inputs:

* ``frozen``: the export's own frozen tower and gates (``FrozenTower``, the bench's floor);
* ``all_rows``: the same arithmetic written out by hand, every gate-input dim on every row;
* ``user_once``: the same, with the user's share of the first gate matmul computed once.

It checks that all three give the same logits, and prints p50 per request size. The export is not
changed: this measures whether a change would pay.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from bench.serving import FrozenTower, ranking_request, user_side_columns
from ppnet.data.pipeline import iter_batches
from ppnet.data.schema import input_kinds
from ppnet.data.split import make_splits
from ppnet.model import RankingModel

SIZES = (1, 64, 256, 1024)
ROUNDS, CALLS = 20, 10  # interleaved rounds, timed calls per version and round
TOLERANCE = 1e-4  # largest logit difference allowed between the versions (float32 sums reordered)


def tower_weights(model: RankingModel) -> dict[str, list[np.ndarray]]:
    """The frozen weights of a single-task PPNet's tower and gates, as numpy arrays."""
    if not model.gated or len(model.task_names) != 1 or model.config.model.name != "ppnet":
        raise ValueError("the experiment takes a single-task ppnet run")
    tower = model.towers()[model.task_names[0]]
    return {
        "hidden": [tower.gates.hidden.kernel.numpy(), tower.gates.hidden.bias.numpy()],
        "scales": [w.numpy() for scale in tower.gates.scales for w in (scale.kernel, scale.bias)],
        "dense": [w.numpy() for dense in tower.dense for w in (dense.kernel, dense.bias)],
    }


class HandTower(tf.Module):
    """The tower and gates written out with constant weights; with ``user_dims`` (a boolean mask
    over the concatenated gate input) the gates' first matmul takes those dims from one row
    (``user``, ``[1, u]``) and the rest from every row (``gate``, ``[N, g - u]``)."""

    def __init__(self, weights: dict[str, list[np.ndarray]], user_dims: np.ndarray | None = None):
        super().__init__()
        kernel, bias = weights["hidden"]
        mask = np.zeros(kernel.shape[0], bool) if user_dims is None else user_dims
        self.user_kernel, self.rest_kernel = tf.constant(kernel[mask]), tf.constant(kernel[~mask])
        self.bias = tf.constant(bias)
        self.scales = [tf.constant(w) for w in weights["scales"]]
        self.dense = [tf.constant(w) for w in weights["dense"]]
        self.parts = len(self.scales) // 2
        specs = {
            "x": tf.TensorSpec([None, self.dense[0].shape[0]], tf.float32),
            "gate": tf.TensorSpec([None, int((~mask).sum())], tf.float32),
            "user": tf.TensorSpec([1, int(mask.sum())], tf.float32),
        }
        self.serve = tf.function(self.logits, input_signature=[specs])

    def logits(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """``GatedTower.call`` at inference: each Dense layer's input scaled by its gate."""
        once = self.bias  # [1, hidden] with the user's share: once per request
        if self.user_kernel.shape[0]:
            once = tf.matmul(inputs["user"], self.user_kernel) + once
        hidden = tf.nn.relu(tf.matmul(inputs["gate"], self.rest_kernel) + once)
        parts = tf.split(hidden, self.parts, axis=-1)
        x = inputs["x"]
        for i in range(self.parts):
            gate = 2.0 * tf.sigmoid(tf.matmul(parts[i], self.scales[2 * i]) + self.scales[2 * i + 1])
            x = tf.matmul(x * gate, self.dense[2 * i]) + self.dense[2 * i + 1]
            x = tf.nn.relu(x) if i < self.parts - 1 else x
        return tf.squeeze(x, axis=-1)


def user_dims(gate_input: np.ndarray) -> np.ndarray:
    """The gate-input dims constant across a request's rows: the user's share (and any dim that is
    constant for every candidate too, which is as much once-per-request work)."""
    return (gate_input == gate_input[:1]).all(axis=0)


def versions(model: RankingModel, tower: list[np.ndarray], n: int, mask: np.ndarray) -> dict[str, tuple]:
    """Each version's callable and its inputs for a request of ``n`` rows (``tower``: the tower's
    input and the gates' input parts of the largest request)."""
    x, gate = tower[0][:n], np.concatenate(tower[1:], axis=-1)[:n]
    weights = tower_weights(model)
    all_rows, once = HandTower(weights), HandTower(weights, mask)
    frozen = FrozenTower(model, tower).serve
    return {
        "frozen": (frozen, {f"x{i}": part[:n] for i, part in enumerate(tower)}),
        "all_rows": (all_rows.serve, {"x": x, "gate": gate, "user": np.zeros([1, 0], np.float32)}),
        "user_once": (once.serve, {"x": x, "gate": gate[:, ~mask], "user": gate[:1, mask]}),
    }


def logits_of(serve, inputs: dict) -> np.ndarray:
    """One call's logits as numpy (the frozen tower returns them by task)."""
    out = serve({k: tf.constant(v) for k, v in inputs.items()})
    return next(iter(out.values())).numpy() if isinstance(out, dict) else out.numpy()


def time_interleaved(calls: dict[str, tuple], rounds: int = ROUNDS, per_round: int = CALLS) -> dict[str, float]:
    """p50 milliseconds of each version, timed in interleaved rounds so that a neighbour's burst
    on the shared machine falls on all of them alike."""
    constants = {
        name: (serve, {k: tf.constant(v) for k, v in inputs.items()}) for name, (serve, inputs) in calls.items()
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (serve, inputs) in constants.items():
            for _ in range(per_round):
                start = time.perf_counter()
                out = serve(inputs)
                (next(iter(out.values())) if isinstance(out, dict) else out).numpy()
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.percentile(t, 50)) for name, t in times.items()}


def request_tower_inputs(model: RankingModel, data_path: str, rows: int) -> tuple[list[np.ndarray], list[str]]:
    """The tower's and gates' inputs of one user's request of ``rows`` candidates (as the bench
    builds it), and the user-side columns."""
    _, valid = make_splits(model.config, data_path, None)
    kinds = input_kinds(model.config, list(valid.files))
    features, _ = next(iter_batches(valid, kinds, model.config.target_columns, max(rows, 65536)))
    users = user_side_columns(features, model.config.data.user_column)
    request = {name: tf.constant(values) for name, values in ranking_request(features, users, rows).items()}
    inputs = model.tower_inputs(request)
    return [x.numpy() for x in [inputs.tower, *inputs.gate_parts]], users


def experiment(model: RankingModel, data_path: str, sizes: tuple[int, ...] = SIZES) -> dict:
    """The whole experiment: the user's share of the gates' first matmul, the largest logit
    difference between the versions, and each version's p50 by request size."""
    tower, users = request_tower_inputs(model, data_path, max(sizes))
    mask = user_dims(np.concatenate(tower[1:], axis=-1))
    result = {"user_columns": users, "gate_dims": int(mask.size), "user_dims": int(mask.sum()), "sizes": {}}
    for n in sizes:
        calls = versions(model, tower, n, mask)
        logits = {name: logits_of(serve, inputs) for name, (serve, inputs) in calls.items()}
        difference = max(float(np.abs(v - logits["frozen"]).max()) for v in logits.values())
        if difference > TOLERANCE:
            raise AssertionError(f"{n} rows: the versions' logits differ by {difference}")
        result["sizes"][str(n)] = {"max_logit_difference": difference, "p50_ms": time_interleaved(calls)}
    return result


def markdown(result: dict) -> str:
    """The p50 table: each version by request size, and user_once against all_rows."""
    lines = [
        f"user-side gate-input dims: {result['user_dims']} of {result['gate_dims']}",
        "",
        "| N | frozen p50 ms | all_rows p50 ms | user_once p50 ms | user_once / all_rows |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n, figures in result["sizes"].items():
        p50 = figures["p50_ms"]
        lines.append(
            f"| {n} | {p50['frozen']:.3f} | {p50['all_rows']:.3f} | {p50['user_once']:.3f} | "
            f"{p50['user_once'] / p50['all_rows']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """``python -m bench.user_once --run RUN_DIR --data PATH [--json OUT]``."""
    from ppnet.rundir import load_run

    cli = argparse.ArgumentParser(prog="python -m bench.user_once", description=__doc__.splitlines()[0])
    cli.add_argument("--run", required=True, help="a finished single-task ppnet run directory")
    cli.add_argument("--data", required=True, help="the log it was trained on (its validation rows are served)")
    cli.add_argument("--json", help="also write the figures here")
    args = cli.parse_args(argv)
    result = experiment(load_run(args.run), args.data)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
