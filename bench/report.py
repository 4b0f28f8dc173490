"""The report: a result as markdown, one table per measure and log, and the result JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from bench import multitask
from bench.quality import QUALITY_KEYS, TIMED
from ppnet.precision import FLOAT32

SERVED = {
    "model": "export, serving_default (one tensor per column)",
    "model_examples": "export, serve_examples",
    "trivial": "trivial: one multiply, one input",
    "trivial_columns": "trivial, the export's column inputs",
    "tower": "the tower and gates alone (frozen), fed their inputs",
}


def write_json(result: dict, directory: Path) -> Path:
    """``directory/<timestamp>.json``, the whole result."""
    out = directory / f"{result['timestamp']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def markdown(result: dict) -> str:
    """The result as markdown: per log, one table per measure."""
    machine = result["machine"]
    lines = [
        f"# ppnet bench {result['timestamp']}",
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_bytes'] / 2**30:.1f} GiB; "
        f"TF {result['versions']['tensorflow']}; matmul peak {peak_summary(machine)}",
    ]
    if "precision_auto" in machine:
        auto = machine["precision_auto"]
        lines.append(f'`train.precision = "auto"` picks {auto["policy"]} here ({auto["why"]})')
    for name, log in result["logs"].items():
        lines += ["", f"## {name} ({log['data']})"]
        # A section run alone (``--only``) leaves the others out; a log without a multi-task config has None.
        for key, table in SECTIONS.items():
            if log.get(key) is not None:
                lines += table(log)
    return "\n".join(lines)


def peak_summary(figures: dict) -> str:
    """The float32 matmul peak, and the bfloat16 one where measured (results before it had none)."""
    text = f"{figures['matmul_peak_flops_per_sec'] / 1e9:.1f} GFLOP/s float32"
    if "bf16_matmul_peak_flops_per_sec" in figures:
        text += f", {figures['bf16_matmul_peak_flops_per_sec'] / 1e9:.1f} GFLOP/s bfloat16"
    return text


def heading(title: str, *columns: str) -> list[str]:
    """A table's title and header rows."""
    return ["", f"### {title}", "", f"| {' | '.join(columns)} |", "|" + " --- |" * len(columns)]


def spread(figures: dict, digits: int = 4) -> str:
    """``mean ± std`` of a summarised figure (``quality.summarise``)."""
    return f"{figures['mean']:.{digits}f} ± {figures['std']:.{digits}f}"


def quality_cells(summary: dict) -> str:
    """auc, gauc and logloss as table cells, each ``mean ± std``."""
    return " | ".join(spread(summary[key]) for key in QUALITY_KEYS)


def quality_table(scores: dict) -> Iterator[str]:
    yield from heading("Quality (validation, mean ± std over seeds)", "model", "auc", "gauc", "logloss")
    for variant, summary in scores.items():
        yield f"| {variant} | {quality_cells(summary)} |"


def multitask_table(board: dict) -> Iterator[str]:
    """The leaderboard: one row per task and model, then each model's training speed.

    The speeds are comparable with each other only: they come from one run of the bench, its models
    interleaved seed by seed, on whatever else the machine was doing meanwhile.
    """
    seeds = len(board["seeds"])
    title = f"Multi-task leaderboard (validation, mean ± std over {seeds} seed{'s' * (seeds > 1)})"
    yield from heading(title, "task", "model", "auc", "gauc", "logloss")
    for task, models in board["quality"].items():
        for model, summary in models.items():
            yield f"| {task} | {model} | {quality_cells(summary)} |"
    yield from heading("Multi-task training speed (this run only)", "model", "examples/sec", f"x {multitask.SINGLE}")
    for model, figures in board["speed"].items():
        ratio = "" if figures["vs_single_task"] is None else f"{figures['vs_single_task']:.2f}"
        yield f"| {model} | {spread(figures[multitask.SPEED_KEY], 0)} | {ratio} |"


def replay_table(figures: dict) -> Iterator[str]:
    """Daily retraining (``bench.replay``): each model's mean over the replayed days, then the time
    of a day's continuation against a retrain from scratch."""
    seeds = len(figures["runs"])
    days = ", ".join(figures["days"])
    title = f"Daily retraining: {days}, each scored before training on it (mean over the days, ± over {seeds} seeds)"
    yield from heading(title, "model", "auc", "gauc", "logloss")
    for model, summary in figures["summary"].items():
        yield f"| {model} | {quality_cells(summary)} |"
    times = figures["seconds"]
    yield from heading("A day's continuation against a retrain from scratch (in process)", "measure", "seconds")
    yield f"| continue on one day (one pass) | {spread(times['continue_seconds'], 1)} |"
    yield f"| retrain from scratch on every earlier day | {spread(times['scratch_seconds'], 1)} |"
    yield f"| ratio | {times['ratio']:.2f} |"


def speed_table(figures: dict) -> Iterator[str]:
    emulated = " (emulated: this CPU lacks native bfloat16)" if figures["bf16_emulated"] else ""
    yield from [
        *heading("Training speed (ppnet)", "measure", "value"),
        f"| input pipeline examples/sec | {figures['input_examples_per_sec']:,.0f} |",
        f"| training FLOPs/example | {figures['train_flops_per_example']:,} |",
        f"| float32 matmul peak GFLOP/s (best of run start, before training) | "
        f"{figures['matmul_peak_flops_per_sec'] / 1e9:.1f} |",
        f"| bfloat16 matmul peak GFLOP/s{emulated} | {figures['bf16_matmul_peak_flops_per_sec'] / 1e9:.1f} |",
    ]


def precision_table(log: dict) -> Iterator[str]:
    """ppnet in float32 and in bfloat16 side by side: training speed (each precision's first seed,
    trained alone), FLOP utilisation of both matmul peaks, and quality over the seeds."""
    figures, quality = log["speed"], log["quality"]
    emulated = ", bfloat16 emulated on this CPU" if figures["bf16_emulated"] else ""
    yield from heading(
        f"Training by precision (ppnet{emulated})",
        *("precision", "examples/sec", "x float32", "GFLOP/s", "of float32 peak", "of bfloat16 peak", *QUALITY_KEYS),
    )
    base = figures["training"][FLOAT32]["examples_per_sec"]
    for policy, run in figures["training"].items():
        yield (
            f"| {policy} | {run['examples_per_sec']:,.0f} | {run['examples_per_sec'] / base:.2f} | "
            f"{run['flops_per_sec'] / 1e9:.1f} | {100 * run['utilisation_of_float32_peak']:.1f}% | "
            f"{100 * run['utilisation_of_bf16_peak']:.1f}% | {quality_cells(quality[TIMED[policy]])} |"
        )


def memory_table(figures: dict) -> Iterator[str]:
    yield from [
        *heading("Memory (peak RSS of `ppnet train`, PPNet)", "log", "train rows", "peak RSS MiB"),
    ]
    for copies in ("1x", "4x"):
        mib = figures[f"peak_rss_{copies}_bytes"] / 2**20
        yield f"| {copies} | {figures[f'train_rows_{copies}']:,} | {mib:,.0f} |"
    yield f"| ratio 4x / 1x | | {figures['ratio_4x_1x']:.2f} |"
    yield f"| 1x, bfloat16 | {figures['train_rows_1x']:,} | {figures['peak_rss_1x_bf16_bytes'] / 2**20:,.0f} |"


def requests_table(figures: dict) -> Iterator[str]:
    """The export on one user's ranking requests: latency and rows/sec beside the tower-alone floor
    and the FLOP bound (forward FLOPs of the request's rows at the serving process's float32 matmul
    peak)."""
    bound = figures["flop_bound"]
    yield from heading(
        "Serving ranking requests (one user, N candidates)",
        *("signature", "N", "p50 ms", "p99 ms", "rows/sec", "tower p50 ms", "p50 / tower"),
        *("FLOP bound ms", "of FLOP bound"),
    )
    for kernels, runs in (("", figures), (", oneDNN off", figures["onednn_off"])):
        for signature, sizes in runs["requests"].items():
            for n, t in sizes.items():
                yield (
                    f"| {signature}{kernels} | {n} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | "
                    f"{t['rows_per_sec']:,.0f} | {t['tower_p50_ms']:.3f} | {t['p50_vs_tower']:.2f} | "
                    f"{t['flop_bound_ms']:.3f} | {100 * t['of_flop_bound']:.0f}% |"
                )
    yield ""
    off = figures["onednn_off"]["matmul_peak_flops_per_sec"]
    yield (
        f"FLOP bound: {bound['forward_flops_per_row'] / 1e6:.3f} MFLOP per row at "
        f"{bound['peak_flops_per_sec'] / 1e9:.1f} GFLOP/s (oneDNN off: {off / 1e9:.1f}), the serving process's "
        f"own float32 matmul peak. A request's rows share the user's columns "
        f"({', '.join(figures['request_columns']['user']) or 'none'}); the others vary."
    )


def serving_table(figures: dict) -> Iterator[str]:
    title = f"Serving: the export and its floors (export {figures['export_bytes'] / 2**20:.1f} MiB)"
    yield from heading(title, "model", "batch", "p50 ms", "p99 ms", "rows/sec")
    for kernels, runs in (("", figures), (", oneDNN off", figures["onednn_off"])):
        for model, label in SERVED.items():
            for batch, t in runs[model].items():
                yield (
                    f"| {label}{kernels} | {batch} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | {t['rows_per_sec']:,.0f} |"
                )


# Each log's tables, in the order of the report, by the key in the log's result they need; each
# table reads the whole log (the precision table sets the speed beside the quality).
SECTIONS = {
    "quality": lambda log: quality_table(log["quality"]),
    "speed": lambda log: [*speed_table(log["speed"]), *precision_table(log)],
    "memory": lambda log: memory_table(log["memory"]),
    "serving": lambda log: [*requests_table(log["serving"]), *serving_table(log["serving"])],
    "replay": lambda log: replay_table(log["replay"]),
    "multitask": lambda log: multitask_table(log["multitask"]),
}
