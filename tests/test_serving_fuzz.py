"""Property-based test of the exported ``serving_default``: any request gives finite probabilities.

Numerics are sanitised inside the model (NaN/Inf → training mean, standardised values clipped
to ±10) and unseen ids or strings fall into OOV buckets, so no input can produce NaN.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = 60

VALUES = {
    "int64": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "string": st.one_of(st.just(""), st.text(max_size=12)),
    "float32": st.one_of(
        st.floats(width=32, allow_nan=True, allow_infinity=True),
        st.sampled_from([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 0.0]),
    ),
}
NUMPY = {"int64": np.int64, "string": object, "float32": np.float32}


@pytest.fixture(scope="module")
def serving(trained_run):
    kinds = json.loads((trained_run / "stats.json").read_text())["kinds"]
    return tf.saved_model.load(str(trained_run / "export" / "1")).signatures["serving_default"], kinds


@st.composite
def requests(draw, kinds):
    """A batch of 0, 1, a few or 4096 rows; the large batch tiles a few drawn rows to stay fast."""
    rows = draw(st.sampled_from([0, 1, 2, 5, 33, 4096]))
    drawn = min(rows, 8)
    batch = {}
    for name, kind in kinds.items():
        values = draw(st.lists(VALUES[kind], min_size=drawn, max_size=drawn))
        batch[name] = np.resize(np.array(values, dtype=NUMPY[kind]), rows)
    return batch


def test_every_request_gives_finite_probabilities_and_equal_rows_equal_outputs(serving):
    serve, kinds = serving

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(requests(kinds))
    def check(batch):
        rows = len(next(iter(batch.values())))
        probs = serve(
            **{k: tf.constant(v, dtype=tf.string if kinds[k] == "string" else None) for k, v in batch.items()}
        )["probability"].numpy()
        assert probs.shape == (rows,)
        assert np.all(np.isfinite(probs)) and np.all((probs >= 0) & (probs <= 1))
        if rows > 8:  # rows were tiled: row i and row i + 8 are the same request
            np.testing.assert_array_equal(probs[8:16], probs[:8])

    check()
