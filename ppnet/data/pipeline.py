"""Training batches: the block shuffler over a split's streamed rows and the ``tf.data`` pipeline.

``iter_batches`` yields numpy (features, targets) batches (targets: the tasks' labels and masks),
shuffled block-wise with a bounded buffer; ``make_dataset`` wraps it as a ``tf.data.Dataset`` with
a new shuffle order every epoch, and ``EpochCursor`` says where the next pass starts so a resumed
run replays the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pyarrow as pa
import tensorflow as tf

from ppnet.data.schema import FLOAT, INT, STRING, to_arrays
from ppnet.data.split import Split

# One training batch: (features, targets), numpy columns by name.
Batch = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]


def _take(arrays: dict[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in arrays.items()}


def iter_batches(
    split: Split, kinds: dict[str, str], targets: list[str], batch_size: int, shuffle_buffer: int = 0, seed: int = 0
) -> Iterator[Batch]:
    """(features, targets) numpy batches, ``targets`` the float32 label and mask columns by name;
    with ``shuffle_buffer`` rows shuffled block-wise.

    Shuffling fills a buffer of ``shuffle_buffer`` rows from files visited in a seeded random
    order, permutes it and emits whole batches, carrying the remainder into the next buffer.
    """
    rng = np.random.default_rng(seed)
    files = list(split.files)
    if shuffle_buffer:
        rng.shuffle(files)
    source = replace(split, files=tuple(files))
    columns = list(dict.fromkeys([*kinds, *targets]))
    read_rows = max(batch_size, min(shuffle_buffer or batch_size, 65536))
    pending: list[dict[str, np.ndarray]] = []
    order = rng if shuffle_buffer else None
    for _, batch in source.batches(columns, read_rows):
        arrays = to_arrays(batch, kinds)
        arrays.update({t: batch.column(t).cast(pa.float32()).to_numpy(zero_copy_only=False) for t in targets})
        pending.append(arrays)
        if sum(len(p[targets[0]]) for p in pending) >= max(shuffle_buffer, batch_size):
            pending = yield from _emit_block(pending, targets, batch_size, order, last=False)
    if pending:
        yield from _emit_block(pending, targets, batch_size, order, last=True)


def _merge(pieces: list[dict[str, np.ndarray]], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """The pieces as one block of rows (permuted with ``rng``), built column by column and emptying
    ``pieces`` as it goes: about one copy of the shuffle buffer in memory, not three."""
    rows = sum(len(next(iter(piece.values()))) for piece in pieces)
    order = rng.permutation(rows) if rng is not None else None
    block = {}
    for name in list(pieces[0]):
        column = np.concatenate([piece.pop(name) for piece in pieces])
        block[name] = column[order] if order is not None else column
    pieces.clear()
    return block


def _emit_block(
    pending: list[dict[str, np.ndarray]],
    targets: list[str],
    batch_size: int,
    rng: np.random.Generator | None,
    last: bool,
):
    """Yield the buffered rows (permuted with ``rng``) as batches; return the rows that do not fill
    a whole batch, to carry into the next buffer (``last``: emit them as a final short batch)."""
    block = _merge(pending, rng)
    rows = len(block[targets[0]])
    full = rows if last else rows - rows % batch_size
    for start in range(0, full, batch_size):
        out = _take(block, slice(start, start + batch_size))
        yield out, {t: out.pop(t) for t in targets}
    # A copy, not a view: a view would keep this whole block alive while the next one fills.
    return [{name: column[full:].copy() for name, column in block.items()}] if full < rows else []


def input_specs(kinds: dict[str, str]) -> dict:
    """One ``[batch]`` ``tf.TensorSpec`` per raw input column: the model's and the export's signature."""
    dtypes = {INT: tf.int64, STRING: tf.string, FLOAT: tf.float32}
    return {name: tf.TensorSpec([None], dtypes[kind], name=name) for name, kind in kinds.items()}


def target_specs(targets: list[str]) -> dict:
    """One ``[batch]`` float32 ``tf.TensorSpec`` per label or mask column."""
    return {name: tf.TensorSpec([None], tf.float32) for name in targets}  # unnamed: any column name works


class EpochCursor:
    """Where the next pass over the training data starts: its epoch and batches to skip.

    Each pass over the dataset is one epoch with its own shuffle order (seed + epoch). After a
    crash, training resumes mid-epoch: the cursor is moved to the backed-up (epoch, step) so the
    resumed epoch replays the same order and skips the batches already trained on.
    """

    def __init__(self) -> None:
        self.epoch, self.skip = 0, 0

    def move_to(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def take(self) -> tuple[int, int]:
        """(epoch, batches to skip) for the pass that starts now; advances to the next epoch."""
        position = (self.epoch, self.skip)
        self.epoch, self.skip = self.epoch + 1, 0
        return position


# Batches per element handed from Python to tf.data. Each element crosses from_generator's Python
# call (the GIL, one conversion per column): one batch at a time, that trip held back training
# whose steps are short (bfloat16; docs/performance.md, "The input pipeline").
GENERATOR_CHUNK_BATCHES = 16


def chunks(batches: Iterator[Batch], size: int) -> Iterator[Batch]:
    """``size`` consecutive (features, targets) batches at a time as one, their rows in order
    (the last chunk may hold fewer)."""
    while group := list(itertools.islice(batches, size)):
        yield tuple(
            {name: np.concatenate([b[part][name] for b in group]) for name in group[0][part]} for part in (0, 1)
        )


def make_dataset(
    split: Split,
    kinds: dict[str, str],
    targets: list[str],
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int = 0,
    cursor: EpochCursor | None = None,
    rows: int | None = None,
    repeat: bool = False,
):
    """A ``tf.data.Dataset`` of (features, targets) batches; a new shuffle order every epoch.

    With ``rows`` (the split's row count) the dataset declares its number of batches, which gives
    Keras a complete progress bar and lets ``BackupAndRestore`` resume mid-epoch. ``repeat``
    streams pass after pass (each reshuffled), for a fixed number of steps per epoch.
    """
    cursor = cursor or EpochCursor()
    signature = (input_specs(kinds), target_specs(targets))

    def generate():
        epoch, skip = cursor.take()
        batches = iter_batches(split, kinds, targets, batch_size, shuffle_buffer, seed + epoch)
        yield from chunks(itertools.islice(batches, skip, None), GENERATOR_CHUNK_BATCHES)

    # rebatch cuts each chunk back into the generator's own batches, in C++: the same batches.
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature).rebatch(batch_size)
    if rows is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-rows // batch_size)))
    return (dataset.repeat() if repeat else dataset).prefetch(tf.data.AUTOTUNE)
