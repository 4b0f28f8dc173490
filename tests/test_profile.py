"""The profiler breakdown: op types of a training step and of a request, from a real trace."""

import statistics

import pytest

from bench.ab import main as ab_main
from bench.profile import main
from ppnet.errors import PPNetError
from tests.helpers import DEFAULT_CONFIG, SMALL_OVERRIDES


def test_profile_breaks_a_step_and_a_request_down_by_op_type(synthetic_dir, capsys):
    # The towers in bfloat16, as `auto` trains them on a CPU with it (emulated elsewhere: slow, not wrong).
    sets = [arg for item in [*SMALL_OVERRIDES, "train.precision=mixed_bfloat16"] for arg in ("--set", item)]
    counts = ["--steps", "3", "--requests", "5", "--rows", "3"]
    result = main(["--config", str(DEFAULT_CONFIG), "--data", str(synthetic_dir), *sets, *counts])
    training, serving = result["training"], result["serving"]
    assert any("MatMul" in op for op in training) and any("Adam" in op for op in training)
    assert result["precision"] == "mixed_bfloat16" and "Cast" in training, "the step profiled is the one trained"
    assert "LookupTableFindV2" in serving and not any("Adam" in op for op in serving)
    assert all(seconds > 0 for seconds in [*training.values(), *serving.values()])
    assert not any("::" in op or "inference" in op for op in [*training, *serving])  # only TF ops
    assert result["step_wall_seconds"] > 0 and result["request_wall_seconds"] > 0
    printed = capsys.readouterr().out
    assert "Training step (batch 256, towers in mixed_bfloat16)" in printed and "3-row request" in printed
    assert result["request_rows"] == 3


def test_profile_refuses_requests_larger_than_a_batch(synthetic_dir):
    sets = [arg for item in SMALL_OVERRIDES for arg in ("--set", item)]
    with pytest.raises(PPNetError, match=r"--rows 257: at most train.batch_size \(256\)"):
        main(["--data", str(synthetic_dir), "--config", str(DEFAULT_CONFIG), *sets, "--rows", "257"])


def test_ab_times_each_variant_in_turns_and_compares_them_to_the_first(synthetic_dir, capsys):
    small = [str(DEFAULT_CONFIG), *SMALL_OVERRIDES]
    variants = ["--variant", "ppnet", *small, "--variant", "dnn", *small, "model.name=dnn", "train.batch_size=128"]
    seconds = ab_main(["--data", str(synthetic_dir), "--rounds", "2", "--steps", "2", *variants])
    assert list(seconds) == ["ppnet", "dnn"] and all(len(s) == 2 and min(s) > 0 for s in seconds.values())
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()]
    printed = {cells[0]: cells for cells in rows if cells and cells[0] in seconds}
    assert printed["ppnet"][-1] == "1.00"
    # examples/sec is each variant's own batch over its median step
    assert float(printed["dnn"][4].replace(",", "")) == pytest.approx(128 / statistics.median(seconds["dnn"]), rel=0.01)


def test_ab_refuses_two_variants_of_one_name(synthetic_dir, capsys):
    with pytest.raises(SystemExit):
        ab_main(["--data", str(synthetic_dir), "--variant", "a", str(DEFAULT_CONFIG), "--variant", "a", "x.toml"])
    assert "variant names must differ" in capsys.readouterr().err
