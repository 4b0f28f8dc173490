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
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

import ppnet
from ppnet.data.pipeline import input_specs
from ppnet.evaluate import is_export
from ppnet.features import vocabulary_index
from ppnet.files import atomic_directory
from ppnet.model import ModelOutput, RankingModel, TowerInputs, build_model, dummy_batch
from ppnet.tf_private import freeze

# tf.Example has no NaN-free "missing" for floats: a missing numeric becomes NaN, i.e. the mean.
EXAMPLE_DEFAULTS = {"int64": -1, "string": "", "float32": float("nan")}


class ServingModule(tf.Module):
    """The exported object: the serving functions and what they read (the embedding tables and
    the hashing layers; not the Keras model, whose per-column vocabulary lookups are not used).

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

        self.vocabulary_index = vocabulary_index(model.config.features, model.stats)
        # Tracked so that they are saved: the variables and layers the signatures read.
        self.embeddings = model.embedding_tables()
        if model.groups.domain:  # EPNet runs before the frozen towers, with its weights as variables
            self.epnet = model.epnet
        self.hashing = [lookup for name, lookup in model.lookups.items() if model.config.feature(name).kind == "hash"]

        tasks = model.task_names

        def run(features) -> tuple[TowerInputs, ModelOutput]:
            index = self.vocabulary_index(features) if self.vocabulary_index else None
            inputs = model.tower_inputs(features, index)
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


def frozen_heads(model: RankingModel) -> Callable[[TowerInputs], ModelOutput]:
    """``model.heads`` at inference with the towers' and gates' weights frozen as constants."""
    example = model.tower_inputs(dummy_batch(model.stats))
    traced = tf.function(
        lambda x, *gate: model.heads(TowerInputs(x, list(gate), []), training=False)
    ).get_concrete_function(
        *[tf.TensorSpec([None, x.shape[-1]], x.dtype) for x in [example.tower, *example.gate_parts]]
    )
    frozen = freeze(traced)

    def heads(inputs: TowerInputs) -> ModelOutput:
        outputs = frozen(inputs.tower, *inputs.gate_parts)
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
) -> Path:
    """Save ``model`` to ``export_base/<version>`` via a temporary directory and a rename.

    TF Serving watches ``export_base`` and would load a half-written version directory; the
    rename makes the version appear complete or not at all. ``splits`` (``Split.to_json`` of the
    run's ``train`` and ``valid`` rows) goes into the metadata: ``ppnet evaluate`` then warns about
    training rows, and the notebook scores the validation rows by default.
    """
    export_base = Path(export_base)
    export_base.mkdir(parents=True, exist_ok=True)
    version = next_version(export_base) if version is None else version
    target = export_base / str(version)
    serving = build_model(model.config, model.stats, compile=False)  # weights only: no optimizer state
    serving.set_weights(model.get_weights())
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
                    "inputs": model.stats.kinds,
                    "splits": splits,
                },
                indent=2,
            )
        )
    return target
