"""Quality: the model variants over seeds, the DNN baseline's own tuning, a one-hot
logistic-regression floor, and per-variant mean and std of validation auc, gauc and logloss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from ppnet.config import Config, Task, load_config
from ppnet.data.pipeline import input_specs, make_dataset
from ppnet.data.schema import input_kinds
from ppnet.data.split import Split, make_splits
from ppnet.evaluate import score_split
from ppnet.features import make_lookup, numeric_normalizer, table_size
from ppnet.stats import Stats
from ppnet.train import train

# "ppnet" is PPNet as the log's config has it, in float32; "ppnet_bf16" the same in bfloat16 (the
# towers and gates, ``ppnet.precision``), run even where bfloat16 is emulated, so every run of the
# bench compares the two. The others fix the gate settings they name, in float32 like "ppnet", so
# that they compare gate settings alone.
VARIANTS = {
    "ppnet": ["model.name=ppnet", "model.gate_stop_gradient=shared", "train.precision=float32"],
    "ppnet_bf16": ["model.name=ppnet", "model.gate_stop_gradient=shared", "train.precision=mixed_bfloat16"],
    "ppnet_tower_ids": [
        "model.name=ppnet",
        "model.gate_stop_gradient=shared",
        "model.personal_ids_in_tower=true",
        "train.precision=float32",
    ],
    "ppnet_ids": [
        "model.name=ppnet",
        "model.gate_stop_gradient=ids",
        "model.personal_ids_in_tower=true",
        "train.precision=float32",
    ],
    "dnn": ["model.name=dnn", "train.precision=float32"],
}
# The variants whose first seed trains alone in a subprocess, for the training examples/sec of
# each precision (Keras' policy name, ``ppnet.precision``).
TIMED = {"float32": "ppnet", "mixed_bfloat16": "ppnet_bf16"}
# The DNN baseline's own tuning where it differs from a config's (PPNet's), by config file name;
# `--set` still wins. KuaiRand: dropout does not help PPNet (kuairand.toml has none) but makes the
# DNN's gAUC steadier from seed to seed, so the baseline is compared at its best (docs/performance.md, "Quality").
BASELINE_TUNING = {"kuairand.toml": ["model.dropout=0.2"]}
LOGREG = "logreg"
LOGREG_L2 = 1e-6
QUALITY_KEYS = ("auc", "gauc", "logloss")


class LogisticRegression(tf.keras.Model):
    """One-hot logistic regression: one weight per vocabulary entry (a 1-d embedding), linear numerics.

    The lookups and normalisers are ppnet's own, so it sees exactly the features the ranker sees.
    """

    def __init__(self, config: Config, stats: Stats, l2: float = LOGREG_L2):
        super().__init__(name="logistic_regression")
        categorical = [f for f in config.features if f.kind != "numeric"]
        self.lookups = {
            f.name: make_lookup(f, stats.kinds[f.name], stats.vocabularies.get(f.name)) for f in categorical
        }
        self.tables = {
            name: tf.keras.layers.Embedding(
                table_size(config.feature(name), stats),
                1,
                embeddings_initializer="zeros",
                embeddings_regularizer=tf.keras.regularizers.L2(l2),
            )
            for name in self.lookups
        }
        self.normalizer = numeric_normalizer(config.features, stats)
        bias = tf.keras.initializers.Constant(stats.log_odds(config.data.label))  # the training CTR, as the ranker
        self.linear = tf.keras.layers.Dense(
            1, kernel_initializer="zeros", bias_initializer=bias, kernel_regularizer=tf.keras.regularizers.L2(l2)
        )

    def call(self, features: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        rows = tf.shape(next(iter(features.values())))[0]
        numeric = self.normalizer(features) if self.normalizer else tf.zeros([rows, 1])
        terms = [table(self.lookups[name](features[name])) for name, table in self.tables.items()]
        return tf.squeeze(tf.add_n([self.linear(numeric), *terms]), axis=-1)


def train_logreg(config: Config, stats: Stats, splits: tuple[Split, Split], kinds: dict[str, str], seed: int) -> dict:
    """Fit the logistic-regression floor (Adam, at most 2 epochs) and report its validation metrics."""
    tf.keras.utils.set_random_seed(seed)
    model = LogisticRegression(config, stats)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    label, batch = config.data.label, config.train.batch_size
    model.fit(
        make_dataset(splits[0], kinds, [label], batch, config.data.shuffle_buffer, seed).map(
            lambda features, targets: (features, targets[label])
        ),
        epochs=min(2, config.train.epochs),
        verbose=0,
    )
    predict = tf.function(lambda features: tf.sigmoid(model(features)), input_signature=[input_specs(kinds)])
    return score_split(
        lambda features: {label: predict(features).numpy()}, splits[1], kinds, [Task(label)], config.data.user_column
    )


def variant_sets(config_path: Path, variant: str, overrides: list[str], seed: int) -> list[str]:
    """The config overrides of one (variant, seed) run: the baseline's tuning, then the user's."""
    tuning = BASELINE_TUNING.get(config_path.name, []) if variant == "dnn" else []
    return [*tuning, *overrides, *VARIANTS[variant], f"train.seed={seed}"]


def variant_runs(
    name: str, data_path: str, config_path: Path, overrides: list[str], pairs: list[tuple[str, int]], work: Path
) -> list[dict]:
    """Train each (variant, seed) in process: each run's metrics with variant and seed."""
    results = []
    for variant, seed in pairs:
        config = load_config(config_path, variant_sets(config_path, variant, overrides, seed))
        metrics = train(config, data_path, work / "runs" / f"{name}-{variant}-s{seed}")
        results.append({"variant": variant, "seed": seed, **metrics})
    return results


def logreg_runs(data_path: str, config_path: Path, overrides: list[str], seeds: list[int], stats: Stats) -> list[dict]:
    """The logistic-regression floor for every seed, on the rankers' splits and statistics."""
    config = load_config(config_path, overrides)
    splits = make_splits(config, data_path, None)
    kinds = input_kinds(config, list(splits[0].files))
    return [{"variant": LOGREG, "seed": seed, **train_logreg(config, stats, splits, kinds, seed)} for seed in seeds]


def summarise(runs: list[dict], keys: tuple[str, ...] = QUALITY_KEYS) -> dict:
    """Per variant (in the order they ran): per-seed ``keys`` (auc/gauc/logloss unless told) and
    their mean and (population) std."""
    summary: dict[str, dict] = {}
    for variant in dict.fromkeys(run["variant"] for run in runs):
        chosen = [run for run in runs if run["variant"] == variant]
        summary[variant] = {"runs": [{key: run[key] for key in ("seed", *keys)} for run in chosen]}
        for key in keys:
            values = np.array([run[key] for run in chosen], dtype=np.float64)
            summary[variant][key] = {"mean": float(values.mean()), "std": float(values.std())}
    return summary
