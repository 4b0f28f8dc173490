"""``train.precision``: which precision ``auto`` picks, and a bfloat16 model that computes what the
float32 one does, within bfloat16's rounding, from the same float32 weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from ppnet.data.pipeline import iter_batches
from ppnet.data.schema import input_kinds
from ppnet.data.split import make_splits
from ppnet.model import build_model
from ppnet.precision import BFLOAT16, FLOAT32, choose, linux_cpu_flags
from ppnet.stats import compute_stats
from ppnet.train import train
from tests.helpers import multitask_config, small_config


@pytest.mark.parametrize(
    "flags, gpu, expected",
    [
        ({"avx512f", "avx512_bf16"}, None, BFLOAT16),
        ({"avx512f", "amx_bf16", "amx_tile"}, None, BFLOAT16),
        ({"avx512f", "avx2"}, None, FLOAT32),  # emulated bfloat16 is slower than float32: never chosen
        (set(), (8, 0), BFLOAT16),
        ({"avx512_bf16"}, (7, 5), FLOAT32),  # a GPU decides, and a pre-Ampere one has no bfloat16
    ],
)
def test_auto_chooses_bfloat16_only_on_native_hardware(flags, gpu, expected):
    chosen = choose("auto", cpu_flags=flags, gpu_capability=gpu)
    assert chosen.policy == expected and chosen.reason.startswith("auto: ")


def test_an_explicit_precision_is_kept_whatever_the_hardware():
    assert choose(FLOAT32, cpu_flags={"avx512_bf16"}).policy == FLOAT32
    assert choose(BFLOAT16, cpu_flags=set()).policy == BFLOAT16


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert linux_cpu_flags(cpuinfo) == {"fpu", "avx512f", "avx512_bf16"}
    assert linux_cpu_flags(tmp_path / "missing") == set()


MODELS = {  # the single-task PPNet, and each multi-task model (pepnet as multitask.toml has it)
    "ppnet": lambda: small_config(),
    "dnn": lambda: multitask_config("model.name=dnn", "model.domain_features=[]"),
    "mmoe": lambda: multitask_config("model.name=mmoe", "model.domain_features=[]"),
    "pepnet": lambda: multitask_config(),
}


@pytest.mark.parametrize("model", MODELS)
def test_a_bfloat16_model_scores_like_the_float32_one_with_the_same_weights(synthetic_dir, model):
    config = MODELS[model]()
    split, _ = make_splits(config, synthetic_dir, None)
    kinds = input_kinds(config, list(split.files))
    stats = compute_stats(config, split, kinds)
    features, _ = next(iter_batches(split, kinds, config.target_columns, 256))
    features = {k: tf.constant(v) for k, v in features.items()}
    full = build_model(config, stats)
    half = build_model(config, stats, precision=BFLOAT16)
    assert all(v.dtype == tf.float32 for v in half.variables), "variables stay float32"
    half.set_weights(full.get_weights())
    full_out, half_out = full.forward(features), half.forward(features)
    for task, logits in full_out.logits.items():
        assert half_out.logits[task].dtype == tf.float32, "the logit the loss reads is float32"
        np.testing.assert_allclose(half_out.logits[task].numpy(), logits.numpy(), atol=0.05)
    assert all(dense.compute_dtype == "bfloat16" for dense in half.tower.dense[:-1]), "the towers compute in bfloat16"
    gates = half_out.gates[config.task_names[0]]
    assert all(g.dtype == tf.float32 for g in gates), "the gates' output layers compute in float32"


def test_a_bfloat16_run_exports_float32_and_says_why(synthetic_dir, tmp_path):
    run = tmp_path / "run"
    metrics = train(small_config("train.precision=mixed_bfloat16", "train.epochs=1"), str(synthetic_dir), run)
    assert metrics["precision"] == {"towers": BFLOAT16, "why": "train.precision"}
    assert json.loads((run / "metrics.json").read_text())["precision"]["towers"] == BFLOAT16
    serve = tf.saved_model.load(str(run / "export" / "1")).signatures["serving_default"]
    assert serve.structured_outputs["probability"].dtype == tf.float32
