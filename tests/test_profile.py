"""The profiler breakdown: op types of a training step and of a one-row request, from a real trace."""

from bench.profile import main
from tests.helpers import DEFAULT_CONFIG, SMALL_OVERRIDES


def test_profile_breaks_a_step_and_a_request_down_by_op_type(synthetic_dir, capsys):
    # The towers in bfloat16, as `auto` trains them on a CPU with it (emulated elsewhere: slow, not wrong).
    sets = [arg for item in [*SMALL_OVERRIDES, "train.precision=mixed_bfloat16"] for arg in ("--set", item)]
    result = main(
        ["--config", str(DEFAULT_CONFIG), "--data", str(synthetic_dir), *sets, "--steps", "3", "--requests", "5"]
    )
    training, serving = result["training"], result["serving"]
    assert any("MatMul" in op for op in training) and any("Adam" in op for op in training)
    assert result["precision"] == "mixed_bfloat16" and "Cast" in training, "the step profiled is the one trained"
    assert "LookupTableFindV2" in serving and not any("Adam" in op for op in serving)
    assert all(seconds > 0 for seconds in [*training.values(), *serving.values()])
    assert not any("::" in op or "inference" in op for op in [*training, *serving])  # only TF ops
    assert result["step_wall_seconds"] > 0 and result["request_wall_seconds"] > 0
    printed = capsys.readouterr().out
    assert "Training step (batch 256, towers in mixed_bfloat16)" in printed and "One-row request" in printed
