"""Config loading, validation and ``--set`` overrides: every user mistake is one PPNetError naming the key."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from ppnet.config import Config, apply_override, as_written_now, config_from_dict, load_config
from ppnet.errors import PPNetError
from tests.helpers import DEFAULT_CONFIG, MULTITASK_CONFIG

KUAIRAND_CONFIG = DEFAULT_CONFIG.parent / "kuairand.toml"


@pytest.fixture()
def raw() -> dict:
    """The default config as a plain TOML table (a fresh copy per test)."""
    return tomllib.loads(DEFAULT_CONFIG.read_text())


def _error(fn, *args) -> str:
    with pytest.raises(PPNetError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message, f"error message must be one line: {message!r}"
    return message


# --- shipped configs ----------------------------------------------------------------------------


def test_default_config_loads_as_written() -> None:
    config = load_config(DEFAULT_CONFIG)
    table = tomllib.loads(DEFAULT_CONFIG.read_text())
    assert isinstance(config, Config)
    assert [f.name for f in config.features] == [f["name"] for f in table["features"]]
    assert config.model.name == table["model"]["name"]
    assert config.model.hidden_units == table["model"]["hidden_units"]
    assert config.train.batch_size == table["train"]["batch_size"]
    assert config.data.label == table["data"]["label"]
    assert set(config.model.personal_ids) <= {f.name for f in config.features}
    assert config.feature("video_duration").kind == "numeric" and config.feature("video_duration").log1p


def test_kuairand_config_loads() -> None:
    config = load_config(KUAIRAND_CONFIG)
    table = tomllib.loads(KUAIRAND_CONFIG.read_text())
    assert [f.name for f in config.features] == [f["name"] for f in table["features"]]
    assert config.model.hidden_units == table["model"]["hidden_units"]
    assert config.data.label not in {f.name for f in config.features}


def test_config_round_trips_through_to_dict() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert config_from_dict(config.to_dict()) == config


def test_int_is_accepted_where_float_expected(raw: dict) -> None:
    raw["train"]["learning_rate"] = 1
    config = config_from_dict(raw)
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)


# --- unknown keys -------------------------------------------------------------------------------


def test_unknown_top_level_key(raw: dict) -> None:
    raw["trainer"] = {"epochs": 3}
    assert "trainer" in _error(config_from_dict, raw)


def test_unknown_key_in_section(raw: dict) -> None:
    raw["train"]["batch_sise"] = 10
    message = _error(config_from_dict, raw)
    assert "batch_sise" in message and "[train]" in message


def test_unknown_key_in_feature(raw: dict) -> None:
    raw["features"][2]["dimension"] = 8
    message = _error(config_from_dict, raw)
    assert "dimension" in message and "features[2]" in message


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(DEFAULT_CONFIG.read_text().replace("[model]\n", "[model]\ntowers = 3\n"))
    message = _error(load_config, path)
    assert str(path) in message and "towers" in message


# --- wrong types and impossible values ----------------------------------------------------------


@pytest.mark.parametrize(
    "section,key,value,shown",
    [
        ("train", "batch_size", "big", "'big'"),
        ("train", "batch_size", True, "True"),  # a bool is not an int
        ("train", "epochs", 2.5, "2.5"),
        ("train", "learning_rate", "fast", "'fast'"),
        ("train", "learning_rate", True, "True"),
        ("model", "batch_norm", 1, "1"),  # an int is not a bool
        ("model", "hidden_units", [8, "4"], "'4'"),
        ("model", "hidden_units", 8, "8"),
        ("model", "name", "transformer", "'transformer'"),
        ("data", "label", 3, "3"),
    ],
)
def test_wrong_type(raw: dict, section: str, key: str, value, shown: str) -> None:
    raw[section][key] = value
    message = _error(config_from_dict, raw)
    assert f"[{section}].{key}" in message and f"got {shown}" in message


def test_wrong_type_in_feature(raw: dict) -> None:
    raw["features"][0]["dim"] = "16"
    message = _error(config_from_dict, raw)
    assert "features[0].dim" in message and "int" in message


def test_section_that_is_not_a_table(raw: dict) -> None:
    raw["train"] = 5
    assert "[train]" in _error(config_from_dict, raw)


def test_empty_hidden_units(raw: dict) -> None:
    raw["model"]["hidden_units"] = []
    assert "hidden_units" in _error(config_from_dict, raw)


def test_non_positive_hidden_unit(raw: dict) -> None:
    raw["model"]["hidden_units"] = [8, 0]
    assert "hidden_units" in _error(config_from_dict, raw)


def test_no_features(raw: dict) -> None:
    raw["features"] = []
    assert "features" in _error(config_from_dict, raw)


def test_feature_without_name(raw: dict) -> None:
    del raw["features"][1]["name"]
    message = _error(config_from_dict, raw)
    assert "features[1]" in message and "name" in message


def test_feature_named_twice(raw: dict) -> None:
    raw["features"].append({"name": "hour", "dim": 8})
    message = _error(config_from_dict, raw)
    assert "'hour'" in message and "more than once" in message


def test_personal_id_not_a_feature(raw: dict) -> None:
    raw["model"]["personal_ids"] = ["user_id", "device_id"]
    message = _error(config_from_dict, raw)
    assert "personal_ids" in message and "device_id" in message


def test_numeric_personal_id(raw: dict) -> None:
    raw["model"]["personal_ids"] = ["user_id", "follow_user_num"]
    message = _error(config_from_dict, raw)
    assert "personal_ids" in message and "follow_user_num" in message and "numeric" in message


def test_empty_personal_ids_only_for_ppnet(raw: dict) -> None:
    raw["model"]["personal_ids"] = []
    assert "personal_ids" in _error(config_from_dict, copy.deepcopy(raw))
    raw["model"]["name"] = "dnn"
    assert config_from_dict(raw).model.personal_ids == []


def test_ids_only_in_the_gates_needs_shared_mode_and_other_features(raw: dict) -> None:
    raw["model"].update(personal_ids_in_tower=False, gate_stop_gradient="ids")
    assert "personal_ids_in_tower" in _error(config_from_dict, copy.deepcopy(raw))
    raw["model"]["gate_stop_gradient"] = "shared"
    assert config_from_dict(copy.deepcopy(raw)).model.personal_ids_in_tower is False
    raw["features"] = [f for f in raw["features"] if f["name"] in raw["model"]["personal_ids"]]
    assert "no input" in _error(config_from_dict, raw)


def test_hash_feature_without_bins(raw: dict) -> None:
    raw["features"][1]["kind"] = "hash"
    message = _error(config_from_dict, raw)
    assert "video_id" in message and "bins" in message
    raw["features"][1]["bins"] = 1000
    assert config_from_dict(raw).feature("video_id").bins == 1000


def test_unknown_feature_kind(raw: dict) -> None:
    raw["features"][0]["kind"] = "embedding"
    message = _error(config_from_dict, raw)
    assert "features[0].kind" in message and "embedding" in message


def test_label_cannot_be_a_feature(raw: dict) -> None:
    raw["features"].append({"name": "is_click"})
    assert "is_click" in _error(config_from_dict, raw)


@pytest.mark.parametrize("key,value", [("dropout", 1.0), ("dropout", -0.1)])
def test_dropout_out_of_range(raw: dict, key: str, value: float) -> None:
    raw["model"][key] = value
    assert "model.dropout" in _error(config_from_dict, raw)


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("train", "batch_size", 0),
        ("train", "epochs", 0),
        ("train", "learning_rate", 0.0),
        ("data", "valid_last", -1),
        ("train", "early_stopping_patience", -1),
        ("train", "backup_every_steps", -7),
        ("train", "steps_per_execution", 0),
        ("train", "seed", -1),
        ("train", "seed", 2**32),
    ],
)
def test_non_positive_values(raw: dict, section: str, key: str, value) -> None:
    raw[section][key] = value
    assert f"{section}.{key}" in _error(config_from_dict, raw)


# --- files --------------------------------------------------------------------------------------


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model\nname = 'dnn'\n")
    message = _error(load_config, path)
    assert str(path) in message and "TOML" in message


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = _error(load_config, path)
    assert str(path) in message and "not found" in message


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    message = _error(load_config, tmp_path)
    assert str(tmp_path) in message


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    message = _error(load_config, path)
    assert str(path) in message


# --- --set overrides ----------------------------------------------------------------------------


def test_override_model_name() -> None:
    assert load_config(DEFAULT_CONFIG).model.name == "ppnet"
    assert load_config(DEFAULT_CONFIG, ["model.name=dnn"]).model.name == "dnn"


def test_override_list() -> None:
    assert load_config(DEFAULT_CONFIG, ["model.hidden_units=[8, 4]"]).model.hidden_units == [8, 4]


def test_override_feature_key() -> None:
    config = load_config(DEFAULT_CONFIG, ["features.user_id.dim=32"])
    assert config.feature("user_id").dim == 32
    assert config.feature("video_id").dim == load_config(DEFAULT_CONFIG).feature("video_id").dim


def test_override_task_key() -> None:
    config = load_config(MULTITASK_CONFIG, ["tasks.is_like.weight=3", 'tasks.long_view.builds_on="is_click"'])
    assert [(t.name, t.weight, t.builds_on) for t in config.tasks] == [
        ("is_click", 1.0, ""),
        ("long_view", 1.0, "is_click"),
        ("is_like", 3.0, ""),
    ]
    config = load_config(MULTITASK_CONFIG, ["tasks.is_like.hidden_units=[32, 16]"])
    assert [config.tower_units(t) for t in config.tasks] == [config.model.hidden_units] * 2 + [[32, 16]]
    message = _error(load_config, MULTITASK_CONFIG, ["tasks.is_follow.weight=3"])
    assert "no task named 'is_follow'" in message


def test_override_types_are_parsed(raw: dict) -> None:
    apply_override(raw, "train.learning_rate=0.01")
    apply_override(raw, "model.batch_norm=true")
    apply_override(raw, "data.label=is_like")
    assert raw["train"]["learning_rate"] == 0.01
    assert raw["model"]["batch_norm"] is True
    assert raw["data"]["label"] == "is_like"


def test_override_into_missing_section(raw: dict) -> None:
    del raw["train"]
    apply_override(raw, "train.epochs=7")
    assert config_from_dict(raw).train.epochs == 7


def test_override_wrong_type_is_reported_by_key() -> None:
    message = _error(load_config, DEFAULT_CONFIG, ["train.batch_size=big"])
    assert "batch_size" in message and "'big'" in message


@pytest.mark.parametrize("item", ["model.name", "=dnn", "dnn"])
def test_override_without_equals(raw: dict, item: str) -> None:
    message = _error(apply_override, raw, item)
    assert repr(item) in message and "KEY=VALUE" in message


def test_override_unknown_feature(raw: dict) -> None:
    message = _error(apply_override, raw, "features.device_id.dim=8")
    assert "device_id" in message


def test_override_feature_without_key(raw: dict) -> None:
    assert "features.user_id" in _error(apply_override, raw, "features.user_id=8")


def test_override_too_deep(raw: dict) -> None:
    assert "model.a.b" in _error(apply_override, raw, "model.a.b=1")


def test_override_unknown_key_is_rejected_at_validation() -> None:
    message = _error(load_config, DEFAULT_CONFIG, ["model.hiden_units=[8]"])
    assert "hiden_units" in message


def test_override_unknown_section_is_rejected_at_validation() -> None:
    message = _error(load_config, DEFAULT_CONFIG, ["optim.lr=0.1"])
    assert "optim" in message


@pytest.mark.parametrize(
    "name, domain, stop_gradient, expected",
    [
        ("pepnet", [], "shared", "needs model.domain_features"),
        ("pepnet", ["device"], "shared", "'device', which is not a declared feature"),
        ("pepnet", ["follow_user_num"], "shared", "'follow_user_num' is numeric"),
        ("pepnet", ["user_id"], "shared", "'user_id' is also a personal id"),
        ("pepnet", ["tab", "tab"], "shared", "lists a feature twice"),
        ("pepnet", ["tab"], "ids", 'needs gate_stop_gradient = "shared"'),
        ("ppnet", ["tab"], "shared", 'model.domain_features is for model.name = "pepnet"'),
    ],
)
def test_pepnet_domain_features_are_checked(raw: dict, name, domain, stop_gradient, expected) -> None:
    raw["model"].update(name=name, domain_features=domain, gate_stop_gradient=stop_gradient)
    message = _error(config_from_dict, raw)
    assert expected in message and "\n" not in message


def test_pepnet_with_a_declared_domain_loads(raw: dict) -> None:
    raw["model"].update(name="pepnet", domain_features=["tab"])
    assert config_from_dict(raw).model.domain_features == ["tab"]


# --- tasks --------------------------------------------------------------------------------------


def test_without_tasks_the_label_is_the_one_task_and_a_saved_config_reads_back(raw: dict) -> None:
    config = config_from_dict(raw)
    assert [(t.name, t.weight, t.mask) for t in config.tasks] == [("is_click", 1.0, "")]
    assert config_from_dict(config.to_dict()) == config


def test_tasks_set_the_label_and_round_trip(raw: dict) -> None:
    raw["data"].pop("label")
    raw["tasks"] = [{"name": "long_view"}, {"name": "is_like", "weight": 2, "mask": "is_click"}]
    config = config_from_dict(raw)
    assert config.data.label == "long_view" and config.task_names == ["long_view", "is_like"]
    assert config.target_columns == ["long_view", "is_like", "is_click"]
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "tasks, sets, expected",
    [
        ([{"name": "a"}, {"name": "a"}], {}, "['a'] listed more than once"),
        ([{"name": "a"}, {"name": "tab"}], {}, "tasks[1] 'tab' cannot also be a feature"),
        ([{"name": "a"}, {"name": "b", "mask": "hour"}], {}, "tasks[1].mask 'hour' is a feature"),
        ([{"name": "a"}, {"name": "b", "mask": "b"}], {}, "tasks[1].mask is the task's own label"),
        ([{"name": "a"}, {"name": "b", "weight": 0}], {}, "tasks[1].weight must be > 0"),
        ([{"name": "a"}, {"name": "b", "builds_on": "b"}], {}, "tasks[1].builds_on 'b': expected an earlier task's"),
        ([{"name": "a", "builds_on": "b"}, {"name": "b"}], {}, "tasks[0].builds_on 'b': expected an earlier task's"),
        ([{"name": "a"}, {"name": "b", "builds_on": "c"}], {}, "one of ['a']"),
        ([{"name": "a"}, {"name": "b", "hidden_units": [8, 0]}], {}, "tasks[1].hidden_units: expected positive"),
        (
            [{"name": "a"}, {"name": "b", "hidden_units": [8]}],
            {"model": {"name": "mmoe"}},
            "got [8] with 'mmoe'",
        ),
        ([{"name": "a"}, {"name": "b c"}], {}, "tasks[1].name 'b c'"),
        ([{"name": "a"}, {"nam": "b"}], {}, "tasks[1]: unknown key(s) ['nam']"),
        ([], {}, "non-empty list of [[tasks]]"),
        ([{"name": "a"}, {"name": "b"}], {"train": {"select_by": "c"}}, "train.select_by"),
        ([{"name": "a"}], {"data": {"label": "b"}}, "data.label = 'b' but the first task is 'a'"),
        ([{"name": "a"}], {"model": {"task_sharing": "primary"}}, "needs two or more [[tasks]]"),
        (
            [{"name": "a"}, {"name": "b"}],
            {"model": {"task_sharing": "primary", "name": "dnn"}},
            "got 2 task(s) and 'dnn'",
        ),
        (
            [{"name": "a"}, {"name": "b"}],
            {"model": {"task_sharing": "primary", "gate_stop_gradient": "ids"}},
            'task_sharing = "primary" needs gate_stop_gradient = "shared"',
        ),
        (
            [{"name": "a"}, {"name": "b"}],
            {"model": {"task_features": ["tab"]}},
            'model.task_features needs model.task_sharing = "primary"',
        ),
        (
            [{"name": "a"}, {"name": "b"}],
            {"model": {"task_sharing": "primary", "task_features": ["device"]}},
            "model.task_features names 'device', which is not a declared feature",
        ),
        (
            [{"name": "a"}, {"name": "b"}],
            {"model": {"task_sharing": "primary", "task_features": ["tab", "tab"]}},
            "model.task_features lists a feature twice",
        ),
        (
            [{"name": "a"}, {"name": "b"}],
            {"model": {"task_sharing": "first"}},
            "[model].task_sharing: expected one of ['joint', 'primary']",
        ),
    ],
)
def test_bad_tasks(raw: dict, tasks: list, sets: dict, expected: str) -> None:
    raw["data"].pop("label")
    raw["tasks"] = tasks
    for section, values in sets.items():
        raw.setdefault(section, {}).update(values)
    assert expected in _error(config_from_dict, raw)


def test_mmoe_needs_experts_and_two_layers(raw: dict) -> None:
    raw["model"].update({"name": "mmoe", "hidden_units": [64]})
    assert "mmoe" in _error(config_from_dict, raw)


def test_negative_threads_are_refused() -> None:
    message = _error(load_config, DEFAULT_CONFIG, ["train.intra_op_threads=-1"])
    assert "train.intra_op_threads must be >= 0 (0: TensorFlow's default), got -1" in message


def test_a_bad_override_is_blamed_on_the_override_not_the_file() -> None:
    message = _error(load_config, DEFAULT_CONFIG, ["train.epochs=3", "model.dropout=2"])
    assert message.startswith("--set train.epochs=3 model.dropout=2: model.dropout must be in [0, 1)")
    assert str(DEFAULT_CONFIG) not in message


def test_a_bad_file_is_blamed_on_the_file_even_with_overrides(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(DEFAULT_CONFIG.read_text().replace("dropout = 0.1", "dropout = 5.0"))
    assert _error(load_config, config, ["train.epochs=1"]).startswith(f"{config}: model.dropout")
    assert load_config(config, ["model.dropout=0.2"]).model.dropout == 0.2  # an override may fix the file


def test_a_saved_config_from_before_a_new_key_reads_as_written_now(raw: dict) -> None:
    """Resuming across an upgrade compares configs as this version writes them: a key added since
    (absent from the saved one) takes its default; a config that no longer loads is left as is."""
    written = config_from_dict(raw).to_dict()
    del written["model"]["task_sharing"]
    assert as_written_now(written) == config_from_dict(raw).to_dict()
    broken = {**written, "model": {**written["model"], "name": "nope"}}
    assert as_written_now(broken) == broken and as_written_now(None) is None
