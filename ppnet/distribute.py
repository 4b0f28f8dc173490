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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ppnet.errors import PPNetError

log = logging.getLogger(__name__)

STRATEGIES = ("local", "mirrored", "multi_worker", "parameter_server")
MIN_SHARD_BYTES = 256 << 10  # parameter servers: tables smaller than this stay in one piece


@dataclass(frozen=True)
class Role:
    """This process in the cluster.

    ``count`` is the number of training workers (their data shards); ``is_chief`` marks the one
    process that computes statistics, owns the run directory and exports (worker 0 under
    ``multi_worker``, the coordinator under ``parameter_server``, the only process otherwise);
    ``serves_only`` marks parameter-server-mode workers and parameter servers, which just run a
    ``tf.distribute.Server`` for the coordinator.
    """

    task_type: str = "local"
    index: int = 0
    count: int = 1
    is_chief: bool = True
    serves_only: bool = False
    parameter_server: bool = False

    @property
    def streamed(self) -> bool:
        """Training input is sharded per worker and streamed pass after pass (epochs of fixed steps)."""
        return self.count > 1 or self.parameter_server


def current_role(strategy: str) -> Role:
    """This process's role; for cluster strategies read and checked from ``TF_CONFIG``."""
    if strategy not in STRATEGIES:
        raise PPNetError(f"--strategy {strategy!r}: expected one of {list(STRATEGIES)}")
    if strategy not in ("multi_worker", "parameter_server"):
        return Role()
    cluster, task = tf_config(strategy)
    workers = len(cluster.get("worker", []))
    if strategy == "multi_worker":
        if task["type"] != "worker" or not 0 <= task["index"] < workers:
            raise PPNetError(f"TF_CONFIG: task {task} is not one of the {workers} workers")
        return Role("worker", task["index"], workers, is_chief=task["index"] == 0)
    if not (workers and cluster.get("ps") and len(cluster.get("chief", [])) == 1):
        raise PPNetError(
            "TF_CONFIG: --strategy parameter_server needs cluster.chief (one), cluster.worker and cluster.ps"
        )
    if task["type"] not in ("chief", "worker", "ps"):
        raise PPNetError(f"TF_CONFIG: task type {task['type']!r} is not chief, worker or ps")
    return Role(
        task["type"],
        task["index"],
        workers,
        is_chief=task["type"] == "chief",
        serves_only=task["type"] != "chief",
        parameter_server=True,
    )


def tf_config(strategy: str) -> tuple[dict, dict]:
    """(cluster, task) from ``TF_CONFIG``, with a one-line error when it is missing or malformed."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", ""))
        cluster, task = dict(config["cluster"]), {"type": config["task"]["type"], "index": int(config["task"]["index"])}
    except (ValueError, KeyError, TypeError):
        raise PPNetError(
            f"TF_CONFIG: --strategy {strategy} needs TF_CONFIG with a cluster (lists of host:port "
            "per job) and a task {type, index}"
        ) from None
    return cluster, task


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``--strategy`` (``local``: TensorFlow's default).

    Under ``parameter_server`` every variable larger than ``MIN_SHARD_BYTES`` (the embedding
    tables) is partitioned across the parameter servers.
    """
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        servers = len(resolver.cluster_spec().as_dict().get("ps", []))
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=MIN_SHARD_BYTES, max_shards=servers
        )
        return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    return tf.distribute.get_strategy()


def serve(role: Role) -> None:
    """Run this worker's or parameter server's ``tf.distribute.Server`` until the process is stopped."""
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    log.info("serving as %s %d", role.task_type, role.index)
    tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=role.task_type,
        task_index=role.index,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    ).join()


def wait_for_file(path: Path, ready: Callable[[Path], bool] | None = None, timeout: float = 3600.0) -> Path:
    """Block until the chief has written ``path`` (workers wait for its statistics) and, with
    ``ready``, until ``ready(path)`` holds (they are this run's, not an earlier one's)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and (ready is None or ready(path))):
        if time.monotonic() > deadline:
            raise PPNetError(
                f"{path}: the chief did not write it for this run within {timeout:.0f}s; is worker 0 running "
                "and is the run directory on a filesystem shared by all workers?"
            )
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


def launch_local(workers: int, train_args: list[str], ps: int = 0, timeout: float = 1800.0) -> int:
    """Run a whole ``ppnet train`` cluster as local processes on 127.0.0.1 with free ports.

    ``ps == 0``: ``workers`` processes under ``multi_worker``. ``ps > 0``: a chief (the
    coordinator) + ``workers`` workers + ``ps`` parameter servers under ``parameter_server``; the
    servers are stopped once the chief is done. The first process's output goes to this terminal,
    the others' to temporary logs shown if they fail. Every process is stopped when one fails or
    ``timeout`` seconds pass. Returns the cluster's exit status (0 on success).
    """
    if workers < 1 or ps < 0:
        raise PPNetError(f"--workers must be >= 1 and --ps >= 0, got {workers} and {ps}")
    tasks = ([("chief", 0)] if ps else []) + [("worker", i) for i in range(workers)] + [("ps", i) for i in range(ps)]
    ports = iter(free_ports(len(tasks)))
    cluster: dict[str, list[str]] = {}
    for job, _ in tasks:
        cluster.setdefault(job, []).append(f"127.0.0.1:{next(ports)}")
    strategy = "parameter_server" if ps else "multi_worker"
    command = [sys.executable, "-m", "ppnet.cli", "train", *train_args, "--strategy", strategy]
    logs = [None] + [tempfile.TemporaryFile(mode="w+") for _ in tasks[1:]]  # noqa: SIM115 (closed in the finally below)
    processes = []
    try:
        for (job, index), out in zip(tasks, logs):
            env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": job, "index": index}})}
            processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
        status = _wait(processes, chief_only=bool(ps), deadline=time.monotonic() + timeout)
    finally:  # done, failed or interrupted: leave no process behind
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for (job, index), process, file in zip(tasks, processes, logs):
        if file is not None:
            if status and process.returncode not in (0, -9):
                file.seek(0)
                sys.stderr.write(f"--- {job} {index} (exit {process.returncode}) ---\n{file.read()[-4000:]}\n")
            file.close()
    return status


def _wait(processes: list[subprocess.Popen], chief_only: bool, deadline: float) -> int:
    """Wait for the first process (``chief_only``) or all of them; the first failure or the deadline
    ends the wait. Returns 0, the failing exit status, or 124 at the deadline."""
    while True:
        codes = [p.poll() for p in processes]
        servers_died = chief_only and any(code is not None for code in codes[1:])
        failed = next((code for code in codes if code not in (None, 0)), 1 if servers_died else None)
        if failed is not None:
            return failed if failed > 0 else 1
        if (codes[0] is not None) if chief_only else all(code is not None for code in codes):
            return 0
        if time.monotonic() > deadline:
            return 124
        time.sleep(0.2)
