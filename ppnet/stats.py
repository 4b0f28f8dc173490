"""Vocabularies and numeric statistics from one streaming pass over the training split.

They are saved in the run directory (``stats.json``) so that ``ppnet export --run`` rebuilds
exactly the model that was trained, and so that a user can see what the model knows.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ppnet.config import Config
from ppnet.data.split import Split
from ppnet.errors import PPNetError
from ppnet.files import write_text_atomic


@dataclass
class Stats:
    """What the model needs from the training data.

    kinds: each feature's input kind (int64 / string / float32), i.e. the serving signature.
    vocabularies: vocab features' values, most frequent first, those seen >= min_count times (a
        continued run keeps its parent's in order and appends the values that reached min_count).
    numeric: per numeric feature [mean, std] after the optional log1p.
    rows: training rows; positive_rate: the first task's positive rate (the CTR);
    positive_rates: each task's rate over the rows its mask keeps (each initialises its task's
    logit bias; runs from before tasks have only ``positive_rate``).
    """

    kinds: dict[str, str]
    vocabularies: dict[str, list]
    numeric: dict[str, list[float]]
    rows: int
    positive_rate: float
    positive_rates: dict[str, float] = field(default_factory=dict)
    run: str = ""  # the run these statistics belong to (``rundir.run_id``): workers check it
    # Per vocab feature, the values seen fewer than min_count times so far, as [value, count]: a run
    # continued on new data (``--init-from``) adds its counts to these, so min_count counts over
    # all the data the model has seen without keeping that data.
    pending: dict[str, list] = field(default_factory=dict)

    def rate(self, task: str) -> float:
        """``task``'s training positive rate (the single task's in runs from before tasks)."""
        return self.positive_rates.get(task, self.positive_rate)

    def log_odds(self, task: str) -> float:
        """The log-odds of ``task``'s rate (clipped away from 0 and 1): the logit bias that starts a
        ranker at the base rate."""
        rate = min(max(self.rate(task), 1e-6), 1 - 1e-6)
        return math.log(rate / (1 - rate))

    def save(self, path: Path) -> None:
        # vars, not asdict (which deep-copies every vocabulary entry); other workers read the file
        # as soon as it exists.
        write_text_atomic(path, json.dumps(vars(self)))

    @classmethod
    def load(cls, path: Path) -> Stats:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise PPNetError(f"{path}: cannot read statistics ({err})") from None


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """log1p that keeps the sign, so negative counts (KuaiRand has them) stay finite."""
    return np.sign(values) * np.log1p(np.abs(values))


def compute_stats(config: Config, split: Split, kinds: dict[str, str], parent: Stats | None = None) -> Stats:
    """One pass over ``split``: value counts for vocab features, moments for numerics.

    With ``parent`` (the statistics of the run being continued) the vocabularies grow: the parent's
    values keep their order, hence their table rows, and values that reach ``min_count`` over the
    parent's pending counts and this split's are appended. The numeric mean and std stay the
    parent's: the trained tower expects its inputs standardised as before.
    """
    vocab_features = [f for f in config.features if f.kind == "vocab"]
    numeric_features = [f for f in config.features if f.kind == "numeric"]
    counts = {f.name: Counter() for f in vocab_features}
    moments = {f.name: np.zeros(3) for f in numeric_features}  # n, mean, sum of squared deviations
    rows = 0
    kept, positives = np.zeros(len(config.tasks)), np.zeros(len(config.tasks))  # per task, within its mask
    columns = list(dict.fromkeys([*config.target_columns, *(f.name for f in vocab_features + numeric_features)]))
    for _, batch in split.batches(columns):
        rows += batch.num_rows
        for i, task in enumerate(config.tasks):
            labels = batch.column(task.name).cast(pa.float64()).to_numpy(zero_copy_only=False)
            mask = batch.column(task.mask).cast(pa.float64()).to_numpy(zero_copy_only=False) if task.mask else 1.0
            kept[i] += np.sum(np.broadcast_to(mask, labels.shape))
            positives[i] += np.sum(labels * mask)
        for f in vocab_features:
            column = batch.column(f.name)
            if pa.types.is_dictionary(column.type):
                column = column.cast(pa.string())
            value_counts = pc.value_counts(column.drop_null())
            counts[f.name].update(
                dict(zip(value_counts.field("values").to_pylist(), value_counts.field("counts").to_pylist()))
            )
        for f in numeric_features:
            # safe=False: integers above 2**53 round to the nearest float64 instead of stopping the pass.
            values = batch.column(f.name).cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            values = values[np.isfinite(values)]
            if f.log1p:
                values = signed_log1p(values)
            if values.size:
                moments[f.name] = _merge_moments(moments[f.name], values)
    if rows == 0:
        raise PPNetError(f"{split.description}: the training split has no rows")
    rates = positives / np.maximum(kept, 1)
    vocabularies, pending = {}, {}
    for f in vocab_features:
        known = parent.vocabularies[f.name] if parent else []
        seen = Counter(dict(map(tuple, parent.pending.get(f.name, [])))) if parent else Counter()
        seen.update(counts[f.name])
        new = seen.keys() - set(known)
        ranked = sorted(((value, seen[value]) for value in new), key=lambda kv: (-kv[1], str(kv[0])))
        vocabularies[f.name] = known + [value for value, n in ranked if n >= f.min_count]
        pending[f.name] = [[value, n] for value, n in ranked if n < f.min_count]
    empty = [name for name, values in vocabularies.items() if not values]
    if empty:
        raise PPNetError(
            f"{split.description}: no value of {empty} occurs min_count times in the training split; "
            'lower features.NAME.min_count or use kind = "hash"'
        )
    return Stats(
        kinds=dict(kinds),
        vocabularies=vocabularies,
        numeric=parent.numeric if parent else {name: _mean_std(m) for name, m in moments.items()},
        rows=rows,
        positive_rate=float(rates[0]),
        positive_rates=dict(zip(config.task_names, map(float, rates))),
        pending=pending,
    )


def _merge_moments(moments: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Add a batch to (n, mean, M2) with Chan et al.'s pairwise update: no cancellation for large offsets."""
    n, mean, m2 = moments
    k = values.size
    batch_mean = values.mean()
    total = n + k
    delta = batch_mean - mean
    return np.array(
        [total, mean + delta * k / total, m2 + np.square(values - batch_mean).sum() + delta * delta * n * k / total]
    )


def _mean_std(moments: np.ndarray) -> list[float]:
    n, mean, m2 = moments
    if n == 0:
        return [0.0, 1.0]
    std = math.sqrt(max(m2 / n, 0.0))
    return [float(mean), float(std) if std > 1e-12 else 1.0]
