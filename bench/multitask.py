"""The multi-task leaderboard: for each task of a log's multi-task config, the single-task PPNet
trained on that label alone against the multi-task models trained on every task at once (the
shared-bottom ``dnn``, ``mmoe``, ``ppnet`` and ``pepnet``), as mean and std over seeds of validation
auc, gauc and logloss, and each model's training examples/sec.

Why: a multi-task model earns its place only if, task by task, it scores at least what a model
trained for that task alone scores, at a cost per example that is not a multiple of it. Papers
report one side of that comparison on private logs; this table puts both sides on one public log,
on the same seeds and the same validation day.

``python -m bench --only multitask`` runs this section alone (see ``bench/__main__.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import quality
from ppnet.config import load_config
from ppnet.train import train

SINGLE = "ppnet_single_task"
# The multi-task contenders: the multi-task config with the model swapped. EPNet's domain gate is
# pepnet's alone, so the others drop the domain features the config names for it. The baselines
# are the paper's: a shared bottom (dnn) and MMoE, every task training the shared parts; ppnet and
# pepnet share as the config says, and pepnet_joint is pepnet with every task training them.
# Joint sharing has no later tasks' own tables, so it drops model.task_features too.
JOINT = ['model.task_sharing="joint"', "model.task_features=[]"]
MODELS = {
    "dnn": ["model.name=dnn", "model.domain_features=[]", *JOINT],
    "mmoe": ["model.name=mmoe", "model.domain_features=[]", *JOINT],
    "ppnet": ["model.name=ppnet", "model.domain_features=[]"],
    "pepnet": ["model.name=pepnet"],
    "pepnet_joint": ["model.name=pepnet", *JOINT],
}
# pepnet without any task building on another's logit (``[[tasks]] builds_on``), where the config
# has one: what that transfer is worth.
UNBUILT = "pepnet_no_builds_on"
# The multi-task config of a log, by its single-task config's file name, in the same directory.
MULTITASK_CONFIGS = {"kuairand.toml": "kuairand_multitask.toml", "default.toml": "multitask.toml"}
# The single-task PPNet on each label; no refit pass after the chosen epoch (the leaderboard scores
# that epoch, and the multi-task config has none).
SINGLE_SETS = ["model.name=ppnet", "train.refit=false"]
SPEED_KEY = "examples_per_sec"
# The smoke run's tiny tower has one layer, and MMoE's experts are all but the last: it needs two.
SMOKE_OVERRIDES = ["model.hidden_units=[16, 8]", "model.experts=2"]


def multitask_config(config_path: Path) -> Path | None:
    """The multi-task config beside a log's single-task config, or ``None`` when it has none (the
    section is then skipped rather than guessed)."""
    name = MULTITASK_CONFIGS.get(config_path.name)
    return config_path.with_name(name) if name and config_path.with_name(name).exists() else None


def plan(
    single_path: Path, multi_path: Path, overrides: list[str], seeds: list[int]
) -> list[tuple[str, Path, list[str]]]:
    """Every training of the leaderboard as (model, config path, config overrides).

    Seed by seed, every model once: a neighbour's burst on a shared machine then slows all models
    alike instead of the ones that happened to run during it, so their speeds stay comparable.
    The user's overrides come first (``tasks.*`` ones in the multi-task runs only); the model's own
    settings and the seed win.
    """
    config = load_config(multi_path, overrides)
    unbuilt = [f'tasks.{task.name}.builds_on=""' for task in config.tasks if task.builds_on]
    models = {**MODELS, **({UNBUILT: [*MODELS["pepnet"], *unbuilt]} if unbuilt else {})}
    single_overrides = [item for item in overrides if not item.startswith("tasks.")]  # it has no [[tasks]]
    runs = []
    for seed in seeds:
        runs += [
            (SINGLE, single_path, [*single_overrides, *SINGLE_SETS, f"data.label={task}", f"train.seed={seed}"])
            for task in config.task_names
        ]
        runs += [(model, multi_path, [*overrides, *sets, f"train.seed={seed}"]) for model, sets in models.items()]
    return runs


def task_metrics(metrics: dict, task: str) -> dict:
    """One task's validation metrics in a run's (every run reports its tasks under ``tasks``)."""
    return metrics["tasks"][task]


def train_one(name: str, data_path: str, model: str, config_path: Path, sets: list[str], work: Path) -> dict:
    """Train one entry in process; its model, seed, overrides, speed and per-task quality."""
    config = load_config(config_path, sets)
    label = f"-{config.data.label}" if model == SINGLE else ""
    metrics = train(config, data_path, work / "runs" / f"{name}-mt-{model}{label}-s{config.train.seed}")
    return {
        "model": model,
        "seed": config.train.seed,
        "sets": sets,
        SPEED_KEY: metrics[SPEED_KEY],
        # which epoch's checkpoint was kept, of how many: where the tasks' best epochs disagree
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "tasks": {
            task: {key: task_metrics(metrics, task)[key] for key in quality.QUALITY_KEYS} for task in config.task_names
        },
    }


def summarise(runs: list[dict], tasks: list[str]) -> dict:
    """Per task, per model (in the order they ran): ``quality.summarise`` of that task's metrics."""
    return {task: quality.summarise([task_row(run, task) for run in runs if task in run["tasks"]]) for task in tasks}


def task_row(run: dict, task: str) -> dict:
    """One run's metrics of one task, as ``quality.summarise`` reads a run (variant = the model)."""
    return {"variant": run["model"], "seed": run["seed"], **run["tasks"][task]}


def speeds(runs: list[dict]) -> dict:
    """Per model: mean and std of training examples/sec over its runs, and its mean as a fraction of
    the single-task PPNet's. The single-task PPNet pools its runs of every label: it is the same
    network whatever label it learns. A run that timed nothing (``None``) is left out."""
    timed = [
        {"variant": run["model"], "seed": run["seed"], SPEED_KEY: run[SPEED_KEY]} for run in runs if run[SPEED_KEY]
    ]
    summary = quality.summarise(timed, keys=(SPEED_KEY,))
    base = summary[SINGLE][SPEED_KEY]["mean"] if SINGLE in summary else None
    for figures in summary.values():
        figures["vs_single_task"] = figures[SPEED_KEY]["mean"] / base if base else None
    return summary


def leaderboard(
    name: str, data_path: str, single_path: Path, multi_path: Path, overrides: list[str], seeds: list[int], work: Path
) -> dict:
    """The whole section for one log: every run, the per-task summary and the speeds."""
    start = time.perf_counter()
    runs = [train_one(name, data_path, *entry, work) for entry in plan(single_path, multi_path, overrides, seeds)]
    tasks = load_config(multi_path, overrides).task_names
    return {
        "config_path": str(multi_path),
        "single_task_config_path": str(single_path),
        "tasks": tasks,
        "seeds": seeds,
        "runs": runs,
        "quality": summarise(runs, tasks),
        "speed": speeds(runs),
        "seconds": time.perf_counter() - start,
    }
