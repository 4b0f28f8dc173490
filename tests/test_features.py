"""VocabularyIndex (the export's fused lookups) gives every value exactly the row its column's own
lookup layer gives it: known values, unseen ones, nulls and integers outside the packed range."""

import numpy as np
import pytest
import tensorflow as tf

from ppnet.config import Feature
from ppnet.features import VocabularyIndex, make_lookup

BIG = 2**62  # beyond the packed integer range: that column gets a table of its own
EDGE = 2**60 - 1  # the largest packed value with 3 integer columns: values above it must not clip onto it
VOCABULARIES = {
    "user": [7, 3, 12, EDGE],
    "item": [3, 99, -5],
    "huge": [BIG, -BIG, 5],
    "city": ["paris", "", "3"],
    "tag": ["3", "x\x1fy"],
    "kind": ["a", "b"],
}
KINDS = {"user": "int64", "item": "int64", "huge": "int64", "city": "string", "tag": "string", "kind": "string"}
NUM_OOV = {"user": 1, "item": 3, "huge": 2, "city": 1, "tag": 4, "kind": 3}


def batch(limit: int) -> dict[str, tf.Tensor]:
    ints = [
        7,
        3,
        12,
        99,
        -5,
        -1,
        0,
        100,
        101,
        102,
        -7,
        BIG,
        -BIG,
        BIG + 1,
        5,
        limit - 1,
        limit,
        -limit - 1,
        3 + limit,
        2**63 - 1,
        -(2**63),
    ]
    strings = [
        "paris",
        "",
        "3",
        "x\x1fy",
        "a",
        "b",
        "lyon",
        "7",
        "1\x1f3",
        "0\x1fparis",
        "PARIS",
        "x",
        "c",
        "d",
        "e",
        "f",
        "g",
        "h",
        "i",
        "j",
        "k",
    ]
    return {
        n: tf.constant(ints if k == "int64" else strings, tf.int64 if k == "int64" else tf.string)
        for n, k in KINDS.items()
    }


@pytest.mark.parametrize("num_oov", [NUM_OOV, dict.fromkeys(NUM_OOV, 1)], ids=["mixed", "one_each"])
def test_fused_rows_equal_each_columns_lookup_layer(num_oov):
    """Also with one OOV row in every column (the default), where unseen integers skip the modulo."""
    index = VocabularyIndex(VOCABULARIES, KINDS, num_oov)
    assert 2 ** (index.shift - 1) == EDGE + 1
    features = batch(EDGE + 1)
    fused = index(features)
    assert set(fused) == set(VOCABULARIES)
    assert [sorted(group) for group in index.groups] == [["item", "user"], ["huge"], ["city", "kind", "tag"]]
    for name, vocabulary in VOCABULARIES.items():
        lookup = make_lookup(Feature(name, num_oov=num_oov[name]), KINDS[name], vocabulary)
        expected = lookup(features[name]).numpy()
        np.testing.assert_array_equal(fused[name].numpy(), expected, err_msg=name)
        assert len(set(expected)) > num_oov[name]  # the batch covers known values as well as OOV buckets


@pytest.mark.parametrize("num_oov", [1, 2])
def test_a_vocabulary_value_spelled_like_keras_oov_token_keeps_its_own_row(num_oov):
    """Keras drops a value equal to StringLookup's OOV token ("[UNK]"), which shifted the rows."""
    vocabulary = ["[UNK]", "\x00[UNK]", "a", "b"]
    lookup = make_lookup(Feature("tag", num_oov=num_oov), "string", vocabulary)
    values = tf.constant(["[UNK]", "\x00[UNK]", "a", "b"])
    assert lookup(values).numpy().tolist() == list(range(num_oov, num_oov + 4))
    assert lookup.vocabulary_size() == num_oov + len(vocabulary)
    fused = VocabularyIndex({"tag": vocabulary}, {"tag": "string"}, {"tag": num_oov})({"tag": values})
    np.testing.assert_array_equal(fused["tag"].numpy(), lookup(values).numpy())


def test_config_round_trip_gives_the_same_rows():
    index = VocabularyIndex(VOCABULARIES, KINDS, NUM_OOV)
    clone = VocabularyIndex.from_config(index.get_config())
    features = batch(2 ** (index.shift - 1))
    first, second = index(features), clone(features)
    assert all(np.array_equal(first[n].numpy(), second[n].numpy()) for n in VOCABULARIES)
