"""The report: a result as markdown, one table per measure and log, and the result JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from bench.quality import QUALITY_KEYS

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
    lines = [
        f"# ppnet bench {result['timestamp']}",
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{result['machine']['memory_bytes'] / 2**30:.1f} GiB; TF {result['versions']['tensorflow']}; "
        f"matmul peak {result['machine']['matmul_peak_flops_per_sec'] / 1e9:.1f} GFLOP/s",
    ]
    for name, log in result["logs"].items():
        lines += [
            "",
            f"## {name} ({log['data']})",
            *quality_table(log["quality"]),
            *speed_table(log["speed"]),
            *memory_table(log["memory"]),
            *serving_table(log["serving"]),
        ]
    return "\n".join(lines)


def heading(title: str, *columns: str) -> list[str]:
    """A table's title and header rows."""
    return ["", f"### {title}", "", f"| {' | '.join(columns)} |", "|" + " --- |" * len(columns)]


def quality_table(scores: dict) -> Iterator[str]:
    yield from heading("Quality (validation, mean ± std over seeds)", "model", "auc", "gauc", "logloss")
    for variant, summary in scores.items():
        cells = [f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}" for k in QUALITY_KEYS]
        yield f"| {variant} | {' | '.join(cells)} |"


def speed_table(figures: dict) -> Iterator[str]:
    yield from [
        *heading("Training speed (ppnet)", "measure", "value"),
        f"| training examples/sec | {figures['train_examples_per_sec']:,.0f} |",
        f"| input pipeline examples/sec | {figures['input_examples_per_sec']:,.0f} |",
        f"| training FLOPs/example | {figures['train_flops_per_example']:,} |",
        f"| training GFLOP/s | {figures['train_flops_per_sec'] / 1e9:.2f} |",
        f"| matmul peak GFLOP/s (best of run start, before training) | "
        f"{figures['matmul_peak_flops_per_sec'] / 1e9:.1f} |",
        f"| FLOP utilisation of matmul peak | {100 * figures['flop_utilisation']:.2f}% |",
    ]


def memory_table(figures: dict) -> Iterator[str]:
    yield from [
        *heading("Memory (peak RSS of `ppnet train`, PPNet)", "log", "train rows", "peak RSS MiB"),
    ]
    for copies in ("1x", "4x"):
        mib = figures[f"peak_rss_{copies}_bytes"] / 2**20
        yield f"| {copies} | {figures[f'train_rows_{copies}']:,} | {mib:,.0f} |"
    yield f"| ratio 4x / 1x | | {figures['ratio_4x_1x']:.2f} |"


def serving_table(figures: dict) -> Iterator[str]:
    title = f"Serving (export {figures['export_bytes'] / 2**20:.1f} MiB)"
    yield from heading(title, "model", "batch", "p50 ms", "p99 ms", "rows/sec")
    for kernels, runs in (("", figures), (", oneDNN off", figures["onednn_off"])):
        for model, label in SERVED.items():
            for batch, t in runs[model].items():
                yield (
                    f"| {label}{kernels} | {batch} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | {t['rows_per_sec']:,.0f} |"
                )
