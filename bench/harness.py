"""What every measure stands on: where things are, the machine and versions, the matmul peak, the
logs to benchmark, and ``ppnet train`` subprocesses under the peak-RSS wrapper."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

import ppnet
from bench.matmul_peak import matmul_peak_flops
from ppnet import precision
from ppnet.data.schema import resolve_files
from ppnet.datasets.kuairand import prepare_kuairand
from ppnet.errors import PPNetError
from ppnet.synthetic import write_synthetic

BENCH = Path(__file__).resolve().parent  # this package, in the repository (it is not installed)
REPO = BENCH.parent
RESULTS = BENCH / "results"
SCRATCH = BENCH / "tmp"
KUAIRAND = REPO.parent / "shared" / "data" / "kuairand-pure"
CONFIGS = Path(importlib.resources.files("ppnet") / "configs")  # the configs shipped with ppnet
PEAK_RSS = BENCH / "peak_rss.py"
PACKAGES = ("tensorflow", "tf-keras", "tensorflow-recommenders", "pyarrow", "numpy", "pandas")
SMOKE_ROWS = 4000
# The matmul peaks measured, by their key in the result's ``machine`` and each log's ``speed``.
PEAK_DTYPES = {"matmul_peak_flops_per_sec": tf.float32, "bf16_matmul_peak_flops_per_sec": tf.bfloat16}


def run_main(main: Callable[[], object], prog: str) -> None:
    """Runs a bench script's ``main``: bad input (a ``PPNetError``) exits with one line naming
    ``prog``, no traceback."""
    try:
        main()
    except PPNetError as err:
        sys.exit(f"{prog}: error: {err}")


def script_command(script: Path, *args: str) -> list[str]:
    """This interpreter running one of the package's standalone scripts. ``-P``: the script's
    directory (this package, whose ``profile.py`` would shadow the standard library's) stays off
    ``sys.path``, so the script sees only what a plain interpreter sees."""
    return [sys.executable, "-P", str(script), *args]


# --- machine -------------------------------------------------------------------------------------


def machine_info() -> dict:
    """CPU model, cores, memory and platform of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpu": models[0] if models else platform.processor(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": pages,
        "platform": platform.platform(),
    }


def precision_auto() -> dict:
    """What ``train.precision = "auto"`` picks on this machine and why (``ppnet.precision``), and
    whether bfloat16 is native here: where it is not, the bench's bfloat16 runs are emulated."""
    chosen = precision.choose("auto")
    return {"policy": chosen.policy, "why": chosen.reason, "bf16_native": chosen.policy == precision.BFLOAT16}


def versions() -> dict:
    """Python, ppnet and library versions, and the git commit of the repository."""
    found = {"python": platform.python_version(), "ppnet": ppnet.__version__}
    found.update({name: importlib.metadata.version(name) for name in PACKAGES})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    found["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    found["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return found


def matmul_peaks(previous: dict | None = None) -> dict[str, float]:
    """The float32 and bfloat16 matmul peaks by their ``PEAK_DTYPES`` key, each the best of this
    measurement and ``previous``'s (a dict holding those keys, e.g. the result's ``machine``): a
    neighbour's burst on a shared VM can depress any single measurement."""
    measured = {name: matmul_peak_flops(dtype=dtype) for name, dtype in PEAK_DTYPES.items()}
    return {name: max(flops, (previous or {}).get(name, 0.0)) for name, flops in measured.items()}


# --- data ----------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace, work: Path) -> list[tuple[str, str, Path]]:
    """(name, parquet path, config) of every log to benchmark, preparing them under ``work``."""
    if args.smoke:
        write_synthetic(work / "synthetic", rows=SMOKE_ROWS, seed=0)
        return [("synthetic", str(work / "synthetic"), CONFIGS / "default.toml")]
    kuairand = Path(args.kuairand)
    if args.data:
        logs = [(Path(args.data).name, args.data, Path(args.config))]
    elif not kuairand.is_dir():
        raise PPNetError(
            f"{kuairand}: KuaiRand slice not found; pass --kuairand DIR, --data PATH --config TOML, or --smoke"
        )
    else:
        prepare_kuairand(
            sorted(kuairand.glob("log_standard_*.csv")),
            kuairand / "user_features_pure.csv",
            kuairand / "video_features_basic_pure.csv",
            work / "kuairand",
        )
        logs = [("kuairand", str(work / "kuairand"), Path(args.config))]
    if args.synthetic:
        write_synthetic(work / "synthetic", seed=0)
        logs.append(("synthetic", str(work / "synthetic"), CONFIGS / "default.toml"))
    return logs


def repeat_log(data_path: str, out: Path, times: int = 4) -> Path:
    """Every parquet file of the log written ``times`` times under different names (same dates)."""
    out.mkdir(parents=True)
    for i, file in enumerate(resolve_files(data_path)):
        for copy in range(times):
            shutil.copyfile(file, out / f"copy{copy}-{i:04d}-{file.name}")
    return out


# --- training subprocesses -----------------------------------------------------------------------


class TrainProcess:
    """``python -m ppnet.cli train`` in a subprocess, under ``peak_rss.py``, which reports its peak
    RSS. Through a wrapper, because a child forked from this large process inherits this process's
    RSS high-water mark in its own ``ru_maxrss``; the training forked by the small wrapper does not."""

    def __init__(self, config_path: Path, data_path: str, overrides: list[str], out: Path):
        self.out, self.log = out, out.with_name(out.name + ".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        sets = [arg for item in overrides for arg in ("--set", item)]
        command = [
            sys.executable,
            "-m",
            "ppnet.cli",
            "train",
            "--config",
            str(config_path),
            "--data",
            data_path,
            "--out",
            str(out),
            *sets,
        ]
        self.process = subprocess.Popen(
            script_command(PEAK_RSS, str(self.log), *command),
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Terminate the wrapper and the training under it (their own process group) if still running."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait()

    def wait(self) -> tuple[int, dict]:
        """Peak RSS in bytes and the run's metrics.json; fails with the tail of the run's log."""
        stdout, _ = self.process.communicate()
        if self.process.returncode != 0:
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-20:])
            raise RuntimeError(f"ppnet train --out {self.out} exited with {self.process.returncode}:\n{tail}")
        return int(stdout.split()[-1]) * 1024, json.loads((self.out / "metrics.json").read_text())  # KiB → bytes
