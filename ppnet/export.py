"""SavedModel export in TF Serving's layout: ``EXPORT_BASE/<version>/``, written atomically.

The export needs TensorFlow alone (no ppnet, no TFRS, no legacy-Keras switch). Signatures:

* ``serving_default``: one ``[batch]`` input per raw feature column → ``probability [batch]``,
  the first task's, and with several tasks ``probability_<task> [batch]`` for each;
* ``serve_examples``: serialized ``tf.Example`` protos (``examples [batch]``) → the same outputs;
* ``gates`` (PPNet and PEPNet): the same raw inputs → ``gate_<i> [batch, width_i]``, each tower
  layer's gate values (``gate_<task>_<i>`` with several tasks), and PEPNet's ``epnet_gate``.

``assets.extra/ppnet.json`` (ignored by TF Serving) records the ppnet version, the tasks, the
label and user columns, the input kinds and the run's training and validation rows, so
``ppnet evaluate`` can score parquet with nothing but the export.
``assets.extra/tf_serving_warmup_requests`` holds TF Serving's warm-up requests (``PredictionLog``
records of TF Serving's own protos), which it replays when it loads the version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

import ppnet
from ppnet.data.pipeline import input_specs
from ppnet.data.split import Split
from ppnet.data.tfrecord import to_example
from ppnet.errors import PPNetError
from ppnet.evaluate import is_export
from ppnet.features import vocabulary_index
from ppnet.files import atomic_directory
from ppnet.model import ModelOutput, RankingModel, TowerInputs, build_model, dummy_batch
from ppnet.stats import Stats
from ppnet.tf_private import freeze

log = logging.getLogger(__name__)

# tf.Example has no NaN-free "missing" for floats: a missing numeric becomes NaN, i.e. the mean.
EXAMPLE_DEFAULTS = {"int64": -1, "string": "", "float32": float("nan")}
# TF Serving replays assets.extra/<WARMUP_FILE> on every version it loads, before the version serves.
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_ROWS = 8  # rows in the larger warm-up requests


class ServingModule(tf.Module):
    """The exported object: the serving functions and the state they read (the embedding tables,
    the vocabulary index's hash tables, EPNet's weights), not the Keras model or its layers.

    The prediction signatures run the tower and its gates with their weights frozen into the
    graph as constants (a copy of the dense weights only, which are small): oneDNN then lays each
    weight matrix out for its kernels once and caches it, instead of on every call, where that
    re-layout had dominated a one-row request. The embedding tables stay variables. The
    vocabulary columns are looked up by one ``VocabularyIndex`` (a few shared hash tables) instead
    of a lookup per column: the same rows, fewer ops per request.
    """

    def __init__(self, model: RankingModel):
        super().__init__(name="ppnet_serving")
        heads = frozen_heads(model)
        kinds = model.stats.kinds
        specs = input_specs(kinds)
        example_spec = {
            name: tf.io.FixedLenFeature([], spec.dtype, default_value=EXAMPLE_DEFAULTS[kinds[name]])
            for name, spec in specs.items()
        }

        index = vocabulary_index(model.config.features, model.stats)
        # EPNet runs before the frozen towers, with its weights as variables.
        read = [index, *model.embedding_tables(), *([model.epnet] if model.groups.domain else [])]
        self.state = saved_state([layer for layer in read if layer is not None])

        tasks = model.task_names

        def run(features) -> tuple[TowerInputs, ModelOutput]:
            inputs = model.tower_inputs(features, index(features) if index else None)
            return inputs, heads(inputs)

        @tf.function(input_signature=[specs])
        def serve(features):
            probabilities = {task: tf.sigmoid(logits) for task, logits in run(features)[1].logits.items()}
            named = {f"probability_{task}": p for task, p in probabilities.items()} if len(tasks) > 1 else {}
            return {"probability": probabilities[tasks[0]], **named}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(examples):
            return serve(tf.io.parse_example(examples, example_spec))

        @tf.function(input_signature=[specs])
        def gates(features):
            inputs, output = run(features)
            prefix = {task: f"gate_{task}_" if len(tasks) > 1 else "gate_" for task in tasks}
            values = {f"{prefix[task]}{i}": g for task in tasks for i, g in enumerate(output.gates[task])}
            return values if inputs.epnet_gate is None else {**values, "epnet_gate": inputs.epnet_gate}

        self.serve, self.serve_examples = serve, serve_examples
        self.gates = gates if model.gated else None

    def signature_map(self) -> dict:
        """Signature name → function (``signatures`` itself is reserved by tf.saved_model)."""
        functions = {"serving_default": self.serve, "serve_examples": self.serve_examples, "gates": self.gates}
        return {name: fn for name, fn in functions.items() if fn is not None}


def saved_state(layers: list[tf.keras.layers.Layer]) -> list:
    """The variables and lookup tables of ``layers``, for the export to track instead of the layers:
    saving a Keras layer traces its call functions, which no signature uses. The signatures capture
    these objects; tracked, they are saved with them."""
    kinds = (tf.Variable, tf.saved_model.experimental.TrackableResource)
    return [obj for layer in layers for obj in tf.train.TrackableView(layer).descendants() if isinstance(obj, kinds)]


def head_structure(model: RankingModel) -> tuple:
    """The nested structure of what ``model``'s heads read (``TowerInputs.head_inputs()``), from a
    dummy batch: flattened with ``tf.nest`` it is the order of the frozen towers' inputs."""
    return model.tower_inputs(dummy_batch(model.stats)).head_inputs()


def frozen_heads(model: RankingModel) -> Callable[[TowerInputs], ModelOutput]:
    """``model.heads`` at inference with the towers' and gates' weights frozen as constants."""
    structure = head_structure(model)
    traced = tf.function(
        lambda *xs: model.heads(TowerInputs.of_heads(tf.nest.pack_sequence_as(structure, xs)), training=False)
    ).get_concrete_function(*[tf.TensorSpec([None, x.shape[-1]], x.dtype) for x in tf.nest.flatten(structure)])
    frozen = freeze(traced)

    def heads(inputs: TowerInputs) -> ModelOutput:
        outputs = frozen(*tf.nest.flatten(inputs.head_inputs()))
        return tf.nest.pack_sequence_as(traced.structured_outputs, outputs)  # frozen outputs come flat

    return heads


def next_version(export_base: Path) -> int:
    """One more than the largest integer version under ``export_base`` (TF Serving serves the largest)."""
    versions = [int(p.name) for p in export_base.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_model(
    model: RankingModel,
    export_base: str | Path,
    version: int | None = None,
    overwrite: bool = False,
    splits: dict | None = None,
    precision: str | None = None,
) -> Path:
    """Save ``model`` to ``export_base/<version>`` via a temporary directory and a rename.

    TF Serving watches ``export_base`` and would load a half-written version directory; the
    rename makes the version appear complete or not at all, warm-up file included. ``splits``
    (``Split.to_json`` of the run's ``train`` and ``valid`` rows) goes into the metadata:
    ``ppnet evaluate`` then warns about training rows, and the notebook scores the validation rows
    by default. Its validation rows also fill the warm-up requests (``warmup_rows``).
    ``precision``: the exported towers' compute dtype (default ``train.export_precision``).
    """
    export_base = Path(export_base)
    export_base.mkdir(parents=True, exist_ok=True)
    version = next_version(export_base) if version is None else version
    target = export_base / str(version)
    precision = precision or model.config.train.export_precision
    serving = serving_model(model, precision)  # the export's own precision, whatever trained the weights
    rows = warmup_rows(splits, model.stats)
    with atomic_directory(target, overwrite, "export version", ours=is_export) as tmp:
        module = ServingModule(serving)
        tf.saved_model.save(module, str(tmp), signatures=module.signature_map())
        extra = tmp / "assets.extra"
        extra.mkdir()
        data = model.config.data
        (extra / "ppnet.json").write_text(
            json.dumps(
                {
                    "ppnet_version": ppnet.__version__,
                    "model": model.config.model.name,
                    "label": data.label,
                    "tasks": [dataclasses.asdict(task) for task in model.config.tasks],
                    "domain_features": model.config.model.domain_features,
                    "user_column": data.user_column,
                    "precision": precision,
                    "inputs": model.stats.kinds,
                    "splits": splits,
                },
                indent=2,
            )
        )
        write_records(extra / WARMUP_FILE, warmup_requests(rows))
    return target


def serving_model(model: RankingModel, precision: str) -> RankingModel:
    """``model`` computing in ``precision`` (``train.export_precision``): itself, or a copy with its weights."""
    if model.precision == precision:
        return model
    copy = build_model(model.config, model.stats, compile=False, precision=precision)
    copy.set_weights(model.get_weights())
    return copy


def warmup_rows(splits: dict | None, stats: Stats) -> dict[str, np.ndarray]:
    """The warm-up requests' rows: the first ``WARMUP_ROWS`` of the run's validation split
    (``splits["valid"]``, read again from its files; its training split when it held nothing out),
    else default values (unseen ids, zero numerics), which run the same ops but are not rows a user
    would send.

    Defaults when no split is recorded (a caller without a run, a run from before ppnet recorded
    its splits) or, with a warning saying why, when its files are gone or no longer read as the
    model's inputs (``ppnet export`` on another machine, data moved or rewritten): the requests
    only have to run, and a missing data set must not stop an export.
    """
    if not splits:
        log.info("no validation split recorded: the warm-up requests carry default values")
    else:
        try:
            return Split.from_json(splits.get("valid", splits["train"])).first_rows(stats.kinds, WARMUP_ROWS)
        except PPNetError as err:
            log.warning("the warm-up requests carry default values, not the validation rows: %s", err)
    return {name: values.numpy() for name, values in dummy_batch(stats, WARMUP_ROWS).items()}


def warmup_requests(rows: dict[str, np.ndarray]) -> list[prediction_log_pb2.PredictionLog]:
    """TF Serving's warm-up records: a one-row and a ``WARMUP_ROWS``-row request (fewer if there
    are fewer ``rows``) to each prediction signature, raw columns to ``serving_default`` and
    ``tf.Example`` protos to ``serve_examples``.

    TF Serving runs them when it loads a version, before the version takes traffic, so the first
    real requests do not pay for initialising the graph and oneDNN's kernels for either shape. A
    failing warm-up request fails the version's load: tests/test_warmup.py runs every record on the export.
    """
    count = min(WARMUP_ROWS, len(next(iter(rows.values()))))
    records = []
    for n in sorted({1, count}):
        batch = {name: values[:n] for name, values in rows.items()}
        examples = [
            to_example({name: v[i : i + 1] for name, v in batch.items()}).SerializeToString(deterministic=True)
            for i in range(n)
        ]
        records.append(predict_log("serving_default", batch))
        records.append(predict_log("serve_examples", {"examples": np.array(examples, dtype=object)}))
    return records


def predict_log(signature: str, inputs: dict[str, np.ndarray]) -> prediction_log_pb2.PredictionLog:
    """One warm-up record: a ``PredictRequest`` to ``signature`` with ``inputs`` as tensor protos."""
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def write_records(path: Path, records: list[prediction_log_pb2.PredictionLog]) -> None:
    """``records`` as a TFRecord file, the warm-up file's format. Serialized deterministically (map
    entries sorted): a re-export of the same rows writes the same bytes, whichever process writes."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString(deterministic=True))
