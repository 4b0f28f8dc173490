"""Scale-out through ``tf.distribute``: strategies, this process's role from ``TF_CONFIG``, and a
launcher that starts a whole cluster as local processes for trying it out and for tests.

``ppnet train`` runs unchanged on every member of a cluster; ``TF_CONFIG`` (the standard
TensorFlow way) tells each process who it is. The chief (worker 0) computes the statistics,
owns the run directory and exports; the other workers read the chief's ``stats.json`` from the
run directory, which must therefore be on a filesystem every worker sees.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ppnet.errors import PPNetError

log = logging.getLogger(__name__)

STRATEGIES = ("local", "mirrored", "multi_worker")


@dataclass(frozen=True)
class Role:
    """This process in the cluster: ``worker`` ``index`` of ``count`` (``local``: a single process)."""

    task_type: str = "local"
    index: int = 0
    count: int = 1

    @property
    def is_chief(self) -> bool:
        """Worker 0 (or the only process): the one that writes the run directory and exports."""
        return self.index == 0


def current_role(strategy: str) -> Role:
    """This process's role; for ``multi_worker`` read and checked from ``TF_CONFIG``."""
    if strategy not in STRATEGIES:
        raise PPNetError(f"--strategy {strategy!r}: expected one of {list(STRATEGIES)}")
    if strategy != "multi_worker":
        return Role()
    try:
        config = json.loads(os.environ.get("TF_CONFIG", ""))
        workers = config["cluster"]["worker"]
        task = config["task"]
        role = Role(task["type"], int(task["index"]), len(workers))
    except (ValueError, KeyError, TypeError):
        raise PPNetError("TF_CONFIG: --strategy multi_worker needs TF_CONFIG with cluster.worker (a list of "
                         "host:port) and task {type: worker, index: i}") from None
    if role.task_type != "worker" or not 0 <= role.index < role.count:
        raise PPNetError(f"TF_CONFIG: task {task} is not one of the {role.count} workers")
    return role


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``--strategy`` (``local``: TensorFlow's default)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def wait_for_file(path: Path, timeout: float = 3600.0) -> Path:
    """Block until the chief has written ``path`` (workers wait for its statistics)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise PPNetError(f"{path}: the chief did not write it within {timeout:.0f}s; is worker 0 running "
                             "and is the run directory on a filesystem shared by all workers?")
        time.sleep(0.2)
    return path


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch_local(workers: int, train_args: list[str], timeout: float = 1800.0) -> int:
    """Run ``ppnet train TRAIN_ARGS --strategy multi_worker`` as ``workers`` processes on 127.0.0.1.

    Worker 0's output goes to this terminal, the others' to temporary log files shown if they
    fail. Every process is stopped when one fails or ``timeout`` seconds pass, so nothing is
    left running. Returns the cluster's exit status (0 when every worker succeeded).
    """
    if workers < 1:
        raise PPNetError(f"--workers must be >= 1, got {workers}")
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    command = [sys.executable, "-m", "ppnet.cli", "train", *train_args, "--strategy", "multi_worker"]
    logs = [None] + [tempfile.TemporaryFile(mode="w+") for _ in range(1, workers)]
    processes = []
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})}
        out = logs[index] or None
        processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
    try:
        status = _wait_all(processes, time.monotonic() + timeout)
    finally:  # interrupted or crashed: leave no worker behind
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for index, (process, file) in enumerate(zip(processes, logs)):
        if file is not None:
            if process.returncode:
                file.seek(0)
                sys.stderr.write(f"--- worker {index} (exit {process.returncode}) ---\n{file.read()[-4000:]}\n")
            file.close()
    return status


def _wait_all(processes: list[subprocess.Popen], deadline: float) -> int:
    """Wait for every process; on the first failure or at the deadline, stop the rest."""
    while any(p.poll() is None for p in processes):
        failed = [p for p in processes if p.returncode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in processes:
                if p.poll() is None:
                    p.kill()
            for p in processes:
                p.wait()
            return failed[0].returncode if failed else 124
        time.sleep(0.2)
    return next((p.returncode for p in processes if p.returncode), 0)
