"""The contract of every declared setting: each key of each section, of each registered method's
``Options``, of each registered add-on's section and of each registered dataset's options declares
its rule once, and a value that breaks it (wrong type, out of range, not one of the choices) is
refused wherever it is set, ``--set`` or a recipe file, with one line naming the key.

The keys are found by walking what is registered, so a method, add-on or dataset added later is
covered without an edit here; a key declared without a rule fails ``test_every_key_declares_a_rule``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
import yaml

from uda_reid.addons import ADD_ONS
from uda_reid.config import (
    AT_LEAST_ONE,
    Limit,
    Rule,
    RunConfig,
    apply_overrides,
    check_config,
    check_section,
    choices_of,
    config_from_dict,
    config_to_dict,
    load_recipe,
    options_of_function,
    rule_of,
    setting,
    undeclared_keys,
)
from uda_reid.data.datasets import DATASETS, dataset_options_type
from uda_reid.errors import ConfigError
from uda_reid.methods import METHODS


@dataclass(frozen=True)
class Key:
    """One declared key: where it lives, its annotation and rule, and what must be set first."""

    dotted: str
    tp: Any
    rule: Rule | None
    default: Any
    needs: tuple[tuple[str, Any], ...] = ()  # e.g. (("adapt.method", "pplr"),) for a method's option

    def __str__(self) -> str:
        return self.dotted if not self.needs else f"{self.dotted}[{','.join(str(v) for _, v in self.needs)}]"


def _fields(cls: type, prefix: str, needs: tuple = ()) -> list[Key]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.name == "add_on_sections":  # holds the add-on sections, walked below; not a key
            continue
        dotted = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _fields(tp, f"{dotted}.", needs)
            continue
        rule = rule_of(f)
        if rule is not None and rule.options in ("method", "dataset"):
            keys.append(Key(dotted, tp, rule, {}, needs))  # the mapping itself; its keys come below
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        keys.append(Key(dotted, tp, rule, default, needs))
    return keys


def declared_keys() -> list[Key]:
    """Every key a run's config has: its own sections, each add-on's section, each method's
    options (with that method chosen) and each dataset's options."""
    keys = _fields(RunConfig, "")
    for name in ADD_ONS.names():
        kind = ADD_ONS.get(name)
        keys += _fields(kind.Options, f"{kind.section}.")
    for name in METHODS.names():
        keys += _fields(METHODS.get(name).Options, "method_options.", (("adapt.method", name),))
    for name in DATASETS.names():
        keys += _fields(dataset_options_type(name), f"dataset_options.{name}.")
    return keys


KEYS = declared_keys()


def _base_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType):
        return next(t for t in typing.get_args(tp) if t is not type(None))
    return tp


def _is_list(tp: Any) -> bool:
    return typing.get_origin(_base_type(tp)) is list


def _wrong_type(tp: Any) -> Any:
    base = _base_type(tp)
    if base in (int, float):
        return "many"
    if base is bool:
        return "maybe"
    if typing.get_origin(base) is dict:
        return "not a mapping"
    return {"not": "valid"}  # for a string, a list, a path


def _out_of_range(tp: Any, limit: Limit) -> Any:
    integer = typing.get_args(_base_type(tp)) == (int,) or _base_type(tp) is int
    if limit.low is not None:
        value = limit.low if limit.low_open else limit.low - 1
    else:
        value = limit.high if limit.high_open else limit.high + 1
    value = int(value) if integer else float(value)
    return [value] if _is_list(tp) else value


def bad_values(key: Key) -> list[Any]:
    values = [_wrong_type(key.tp)]
    if key.rule is not None and key.rule.limit is not None:
        values.append(_out_of_range(key.tp, key.rule.limit))
    if key.rule is not None and key.rule.allowed() is not None:
        values.append(["no_such_word"] if _is_list(key.tp) else "no_such_word")
    return values


def _nested(dotted: str, value: Any) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _merge(into: dict, more: dict) -> dict:
    for name, value in more.items():
        if isinstance(into.get(name), dict) and isinstance(value, dict):
            _merge(into[name], value)
        else:
            into[name] = value
    return into


def _recipe(tmp_path, key: Key, value: Any):
    data: dict = {}
    for dotted, given in (*key.needs, (key.dotted, value)):
        _merge(data, _nested(dotted, given))
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _assert_one_line_naming(error: ConfigError, key: Key, starts: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(starts), message
    assert f"{key.dotted} must be" in message, message


def test_the_walk_finds_every_kind_of_key():
    dotted = {key.dotted for key in KEYS}
    assert {"optim.lr", "clustering.k2", "pretrain.queue_size", "gds.momentum", "camera_proxies.mode",
            "method_options.temperature", "dataset_options.cuhk03.variant", "dataset_options.folder.camera_regex"} <= dotted
    assert all(f"{ADD_ONS.get(name).section}." in " ".join(dotted) for name in ADD_ONS.names())
    assert len(KEYS) > 100


def test_every_key_declares_a_rule():
    assert [str(key) for key in KEYS if key.rule is None] == []


@dataclass
class _Sloppy:
    declared: int = setting(1, limit=AT_LEAST_ONE)
    plain: int = 3


def test_a_key_without_a_rule_is_reported(monkeypatch):
    assert undeclared_keys(_Sloppy, "sloppy") == ["sloppy.plain"]

    def loader(root, *, ruled: Annotated[int, Rule(limit=AT_LEAST_ONE)] = 1, bare: int = 2):
        return root

    assert undeclared_keys(options_of_function(loader)) == ["bare"]
    assert undeclared_keys(RunConfig) == []

    # a method registered with such an Options is caught by the walk above, with no edit of this file
    class Sloppy(METHODS.get("baseline")):
        Options = _Sloppy

    monkeypatch.setitem(METHODS._items, "zz_sloppy", Sloppy)
    assert [str(key) for key in declared_keys() if key.rule is None] == ["method_options.plain[zz_sloppy]"]


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_a_bad_value_is_one_line_naming_the_key_through_set(key):
    for value in bad_values(key):
        with pytest.raises(ConfigError) as error:
            apply_overrides(RunConfig(), {**dict(key.needs), key.dotted: value}, "--set")
        _assert_one_line_naming(error.value, key, f"--set {key.dotted}=")


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_a_bad_value_is_one_line_naming_the_key_and_file_in_a_recipe(key, tmp_path):
    for value in bad_values(key):
        path = _recipe(tmp_path, key, value)
        with pytest.raises(ConfigError) as error:
            load_recipe(path)
        _assert_one_line_naming(error.value, key, f"{path}: ")


def _accepted_alone(key: Key, value: Any) -> bool:
    """Whether ``value`` is accepted with every other key at its default (a declared relation may
    refuse it there: a transformer ``model.arch`` wants ``model.pooling: token``)."""
    try:
        check_config(apply_overrides(RunConfig(), {**dict(key.needs), key.dotted: value}, "--set"))
    except ConfigError as error:
        assert "must be" in str(error) and key.dotted.rsplit(".", 1)[0] in str(error), error
        return False
    return True


@pytest.mark.parametrize("key", KEYS, ids=str)
def test_in_range_values_are_accepted_from_set_and_recipe(key, tmp_path):
    values = [key.default]
    allowed = key.rule.allowed() if key.rule is not None else None
    if allowed and not _is_list(key.tp):
        others = [value for value in reversed(allowed) if value != key.default and _accepted_alone(key, value)]
        assert others or len(allowed) == 1, f"no value of {key} but its default is accepted"
        values += others[:1]
    for value in values:
        config = apply_overrides(RunConfig(), {**dict(key.needs), key.dotted: value}, "--set")
        check_config(config)
        assert load_recipe(_recipe(tmp_path, key, value)) == config


def test_method_options_are_checked_when_set_not_when_the_method_is_built(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set method_options.temperature=0: method_options.temperature must be > 0, got 0$"):
        apply_overrides(RunConfig(), {"method_options.temperature": "0"}, "--set")
    path = tmp_path / "r.yaml"
    path.write_text("adapt: {method: cluster_contrast}\nmethod_options: {momentum: 1.5}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: method_options.momentum must be in \[0, 1\), got 1.5$"):
        load_recipe(path)
    # the method may come after its options; choosing a method its options do not fit names the choice
    config = apply_overrides(RunConfig(), {"method_options.beta": "0.3", "adapt.method": "pplr"}, "--set")
    assert config.method_options == {"beta": 0.3}
    with pytest.raises(ConfigError, match=r"^--set adapt.method=cap: method_options: unknown key 'beta'; valid keys: temperature"):
        apply_overrides(config, {"adapt.method": "cap"}, "--set")
    # an extending recipe's options are checked against the method in force
    (tmp_path / "base.yaml").write_text("adapt: {method: pplr}\n")
    (tmp_path / "child.yaml").write_text("extends: base\nmethod_options: {num_parts: 0}\n")
    with pytest.raises(ConfigError, match=r"child.yaml: method_options.num_parts must be >= 1, got 0"):
        load_recipe(tmp_path / "child.yaml")


def test_relations_are_checked_once_every_key_is_set_and_name_the_key_set():
    with pytest.raises(ConfigError, match=r"^--set clustering.k1=3: clustering.k2 must be <= clustering.k1 \(3\), got 6$"):
        apply_overrides(RunConfig(), {"clustering.k1": "3"}, "--set")
    config = apply_overrides(RunConfig(), {"clustering.k1": "3", "clustering.k2": "2"}, "--set")  # either order
    assert (config.clustering.k1, config.clustering.k2) == (3, 2)
    with pytest.raises(ConfigError, match=r"^--set data.num_instances=80: data.num_instances must be <= data.batch_size \(64\), got 80$"):
        apply_overrides(RunConfig(), {"data.num_instances": "80"}, "--set")


def test_a_recipe_breaking_a_relation_names_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {batch_size: 8, num_instances: 16}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: data.num_instances must be <= data.batch_size \(8\), got 16$"):
        load_recipe(path)


def test_check_config_finds_what_code_built_around_the_checks():
    check_config(RunConfig())
    config = RunConfig()
    cases = [
        (dataclasses.replace(config, clustering=dataclasses.replace(config.clustering, k2=50)),
         "clustering.k2 must be <= clustering.k1 (30), got 50"),
        (dataclasses.replace(config, method_options={"temperature": 0}), "method_options.temperature must be > 0, got 0"),
        (dataclasses.replace(config, pretrain=dataclasses.replace(config.pretrain, queue_size=-3)),
         "pretrain.queue_size must be >= 1, got -3"),
        (dataclasses.replace(config, gds=dataclasses.replace(config.gds, momentum=1.0)), "gds.momentum must be in [0, 1), got 1"),
        (dataclasses.replace(config, dataset_options={"cuhk03": {"variant": "label"}}),
         "dataset_options.cuhk03.variant must be 'labeled' or 'detected', got 'label'"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError) as error:
            check_config(bad)
        assert str(error.value) == message


def test_check_section_checks_options_built_in_code():
    gds = dataclasses.replace(RunConfig().gds, pairs="some")
    with pytest.raises(ConfigError, match=r"^gds.pairs must be 'all' or 'hardest', got 'some'$"):
        check_section(gds, "gds")


def test_registry_names_are_looked_up_when_checked():
    with pytest.raises(ConfigError, match=r"^--set clustering.clusterer=optics: clustering.clusterer must be one of dbscan, hdbscan, kmeans, got 'optics'$"):
        apply_overrides(RunConfig(), {"clustering.clusterer": "optics"}, "--set")
    for key, registry_names in [("adapt.method", METHODS.names()), ("clustering.knn", None), ("model.arch", None)]:
        allowed = choices_of(key)
        assert allowed and (registry_names is None or set(registry_names) <= set(allowed))
    assert choices_of("camera_proxies.mode") == ("off", "cap", "pplr")
    assert choices_of("optim.lr") is None


def test_add_on_sections_are_top_level_sections_declared_by_the_add_ons(tmp_path):
    config = RunConfig()
    for name in ADD_ONS.names():
        kind = ADD_ONS.get(name)
        assert isinstance(getattr(config, kind.section), kind.Options)
        assert kind.section in config_to_dict(config)
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key 'gdss'; valid keys: dataset, .*camera_proxies.*gds"):
        (tmp_path / "r.yaml").write_text("gdss: {enabled: true}\n")
        load_recipe(tmp_path / "r.yaml")
    on = apply_overrides(config, {"gds.enabled": True})
    assert on.gds.enabled and not config.gds.enabled  # a copy, as every section
    assert dataclasses.replace(on, gds=config.gds) == config
    assert config_from_dict(config_to_dict(on)) == on


def test_the_config_module_does_not_import_the_add_ons():
    code = "import sys, uda_reid.config; assert 'uda_reid.addons' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
