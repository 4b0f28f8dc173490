"""``ppnet`` command line: parses arguments and calls one function per command.

User errors (``PPNetError``) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import ppnet  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from ppnet import console
from ppnet.distribute import STRATEGIES
from ppnet.errors import PPNetError


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    verbose = args.verbose or console.verbose_requested()
    if verbose:  # and so are the processes it starts (launch-local's workers)
        os.environ[console.VERBOSE_ENV] = "1"
    console.setup_logging()
    if args.tensorflow:
        console.load_tensorflow(verbose)
    try:
        result = args.handler(args)
    except PPNetError as err:
        print(f"ppnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ppnet: interrupted{interrupted_hint(args)}", file=sys.stderr)
        return 130
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


def interrupted_hint(args: argparse.Namespace) -> str:
    """What an interrupted training leaves and how to go on (other commands leave nothing)."""
    if args.handler is not run_train:
        return ""
    partial = Path(args.out).with_name(Path(args.out).name + ".partial")
    if not partial.exists():
        return ""
    return f"; the partial run is kept in {partial}: rerun the same command to resume it, or add --fresh to start over"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ppnet", description="PPNet CTR ranking: prepare, train, evaluate, export.")
    # Every command but `prepare` loads TensorFlow and takes --verbose.
    top.set_defaults(tensorflow=True, verbose=False)
    commands = top.add_subparsers(required=True, metavar="COMMAND")

    prepare = commands.add_parser("prepare", help="make a parquet click log").add_subparsers(
        required=True, metavar="SOURCE"
    )
    kuairand = prepare.add_parser("kuairand", help="official KuaiRand-Pure CSV files → parquet, one file per date")
    kuairand.add_argument("--logs", nargs="+", required=True, help="log_standard_*.csv file(s)")
    kuairand.add_argument("--users", required=True, help="user_features_*.csv")
    kuairand.add_argument("--videos", required=True, help="video_features_basic_*.csv")
    kuairand.add_argument("--out", required=True, help="output directory")
    kuairand.add_argument(
        "--missing-video",
        choices=["keep", "drop"],
        default="keep",
        help="log rows whose video is not in the video table: keep (OOV author) or drop",
    )
    kuairand.add_argument("--overwrite", action="store_true")
    kuairand.set_defaults(handler=run_prepare_kuairand, tensorflow=False)
    synthetic = prepare.add_parser("synthetic", help="the embedded default click log (deterministic by seed)")
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--rows", type=positive, default=300_000)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--overwrite", action="store_true")
    synthetic.set_defaults(handler=run_prepare_synthetic, tensorflow=False)

    train = commands.add_parser("train", help="train, validate and export a model")
    train.add_argument("--config", required=True, help="TOML config, e.g. ppnet/configs/default.toml")
    train.add_argument("--data", required=True, help="parquet file, directory or glob")
    train.add_argument("--valid", help="validation parquet (default: split by data.split_column)")
    train.add_argument("--out", required=True, help="run directory to create")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. model.name=dnn (repeatable)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--fresh", action="store_true", help="discard an interrupted run instead of resuming it")
    train.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="local",
        help="tf.distribute strategy; multi_worker and parameter_server read the cluster from TF_CONFIG",
    )
    train.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        help="continue a finished run on this data: its best weights, optimizer state and vocabularies "
        "(grown by the new ids); the config must build the same network",
    )
    train.add_argument(
        "--init-weights-only", action="store_true", help="with --init-from: a fresh optimizer, not the parent's"
    )
    add_verbose(train)
    train.set_defaults(handler=run_train)

    launch = commands.add_parser(
        "launch-local",
        help="run `ppnet train` as a multi-worker cluster on 127.0.0.1",
        usage="ppnet launch-local [--workers N] [--ps M] [--timeout S] -- TRAIN_ARGS ...",
    )
    launch.add_argument("--workers", type=int, default=2)
    launch.add_argument("--ps", type=int, default=0, help="parameter servers (0: multi_worker, >0: parameter_server)")
    launch.add_argument("--timeout", type=float, default=1800.0, help="stop every worker after this many seconds")
    launch.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of `ppnet train`, after --")
    add_verbose(launch)
    launch.set_defaults(handler=run_launch_local)

    replay = commands.add_parser(
        "replay", help="day by day: score each day with the current model, then continue training on it"
    )
    replay.add_argument("--config", required=True, help="the base run's config (TOML)")
    replay.add_argument("--base", required=True, help="a finished run directory to start from")
    replay.add_argument("--days", nargs="+", required=True, help="parquet files or directories, oldest first")
    replay.add_argument(
        "--out",
        required=True,
        help="new directory (replay.json, export/<version>/, runs/), or a replay's to resume or extend",
    )
    replay.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    add_verbose(replay)
    replay.set_defaults(handler=run_replay)

    evaluate = commands.add_parser("evaluate", help="score parquet data with an exported SavedModel")
    evaluate.add_argument("--model", required=True, help="SavedModel version directory, e.g. RUN/export/1")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--label", help="label column (default: the one the model was trained on)")
    evaluate.add_argument("--user-column", help="gAUC groups (default: the training config's)")
    evaluate.add_argument(
        "--by", metavar="COLUMN", help="also score each value of this column apart (e.g. tab, the domain)"
    )
    evaluate.add_argument("--json", help="also write the metrics to this file")
    add_verbose(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    export = commands.add_parser("export", help="export a run's best checkpoint again")
    export.add_argument("--run", required=True, help="a finished run directory")
    export.add_argument("--out", required=True, help="export base; the model goes to OUT/<next version>")
    export.add_argument("--version", type=positive, help="version number (default: one more than the largest)")
    export.add_argument("--overwrite", action="store_true")
    export.add_argument(
        "--precision",
        choices=["float32", "mixed_bfloat16"],
        help="the exported towers' compute dtype (default: the run's train.export_precision; docs/serving.md)",
    )
    add_verbose(export)
    export.set_defaults(handler=run_export)
    return top


def add_verbose(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--verbose",
        action="store_true",
        help=f"also show TensorFlow's start-up and warning logs (or set {console.VERBOSE_ENV}=1)",
    )


def positive(text: str) -> int:
    """An argparse type: an integer >= 1 (row counts, TF Serving version numbers, step counts)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def run_prepare_kuairand(args: argparse.Namespace) -> dict:
    from ppnet.datasets.kuairand import prepare_kuairand

    return prepare_kuairand(
        args.logs, args.users, args.videos, args.out, missing_video=args.missing_video, overwrite=args.overwrite
    )


def run_prepare_synthetic(args: argparse.Namespace) -> dict:
    from ppnet.synthetic import write_synthetic

    return write_synthetic(args.out, rows=args.rows, seed=args.seed, overwrite=args.overwrite)


def run_train(args: argparse.Namespace) -> dict | None:
    from ppnet.config import load_config
    from ppnet.train import train

    if args.init_weights_only and not args.init_from:
        raise PPNetError("--init-weights-only needs --init-from RUN_DIR")
    config = load_config(args.config, args.set)
    metrics = train(
        config,
        args.data,
        args.out,
        args.valid,
        overwrite=args.overwrite,
        fresh=args.fresh,
        strategy=args.strategy,
        init_from=args.init_from,
        init_optimizer=not args.init_weights_only,
    )
    # What the run measured; the rows it trained and validated on (file lists) stay in metrics.json.
    return {key: value for key, value in metrics.items() if key != "splits"} if metrics else None


def run_launch_local(args: argparse.Namespace) -> None:
    from ppnet.distribute import launch_local

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    status = launch_local(args.workers, train_args, ps=args.ps, timeout=args.timeout)
    if status:
        raise PPNetError(f"launch-local: the cluster failed (exit status {status}); see the workers' output above")


def run_replay(args: argparse.Namespace) -> None:
    """Prints the per-day table; the report is OUT/replay.json."""
    from ppnet.config import load_config
    from ppnet.replay import REPORT, replay, table

    report = replay(load_config(args.config, args.set), args.base, args.days, args.out)
    print(f"{table(report)}\n(written to {Path(args.out) / REPORT})")


def run_evaluate(args: argparse.Namespace) -> None:
    """Prints the metrics as a table, one row per task (and per task and ``--by`` value); ``--json``
    writes them nested by task."""
    from ppnet import metrics
    from ppnet.evaluate import evaluate_export
    from ppnet.files import check_output_path, write_text_atomic

    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise PPNetError(f"--json {args.json}: its directory does not exist")
    if args.json:
        check_output_path(Path(args.json), "metrics file", directory=False)
    result = evaluate_export(args.model, args.data, label=args.label, user_column=args.user_column, by=args.by)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(result, indent=2))
    print(f"{args.data}:\n{metrics.table(result)}")
    if args.by:
        print(f"\nby {args.by}:\n{metrics.slice_table(result, args.by)}")


def run_export(args: argparse.Namespace) -> dict:
    from ppnet.export import export_model
    from ppnet.files import exclusive_lock
    from ppnet.rundir import load_run, read_json

    model = load_run(args.run)
    splits = read_json(Path(args.run) / "metrics.json", "the run's metrics").get("splits")  # older runs recorded none
    with exclusive_lock(Path(args.out), "export base"):  # versions are allocated one export at a time
        path = export_model(
            model, args.out, version=args.version, overwrite=args.overwrite, splits=splits, precision=args.precision
        )
    return {"export": str(path)}


if __name__ == "__main__":
    sys.exit(main())
