"""Checking values against their declarations: coercion of recipe and ``--set`` values to the declared
type, ranges and words, relations between keys, the options of ``adapt.method`` and of each dataset, and
the one-line errors that name the key and where its value came from
(``--set optim.lr=-1: optim.lr must be > 0, got -1``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import yaml

from ..errors import ConfigError
from .rules import _ADD_ON_SECTIONS, RULE_KEY, Rule, _is_number, _lookup, _quoted_choices, rule_of
from .sections import RunConfig, _RunFields, section_types

class _Invalid(Exception):
    """A value that is not what its setting must be: ``requirement`` ("an integer"), the value."""

    def __init__(self, requirement: str, value: Any, hint: str = "") -> None:
        super().__init__(requirement)
        self.requirement, self.value, self.hint = requirement, value, hint


@dataclass(frozen=True)
class _Source:
    """Where values come from, for messages: an option (``"--set "``: each key is shown as typed,
    ``--set optim.lr=-1``), something named (a recipe file, "saved config"), or nothing (code)."""

    kind: str  # "option" | "named" | "because" (another key's value made these wrong) | "none"
    text: str = ""

    def context(self, section: str | None) -> str:
        """Before ``unknown key``: ``--set optim``, ``recipe.yaml.optim``, ``method_options``."""
        if self.kind == "option":
            return f"{self.text}{section or ''}".rstrip()
        if self.kind == "named":
            return f"{self.text}.{section}" if section else self.text
        if self.kind == "because":
            return f"{self.text}: {section}" if section else self.text
        return section or "config"

    def prefix(self, dotted: str | None, raw: Any = None) -> str:
        """Before ``KEY must be``: ``--set optim.lr=-1: ``, ``recipe.yaml: ``, nothing for code."""
        if self.kind == "option":
            return f"{self.text}{dotted}={raw}: " if dotted is not None else f"{self.text.rstrip()}: "
        if self.kind in ("named", "because"):
            return f"{self.text}: "
        return ""


_NO_SOURCE = _Source("none")
_SECTION_NAME = re.compile(r"[A-Za-z_]\w*(\.\w+)*")


def _source_of(where: str, obj: Any, section: str | None) -> tuple[_Source, str | None]:
    """``update_dataclass``'s ``where``: an option (ends with a space), the dotted name of the section
    ``obj`` is (``"method_options"``, ``"adapt.source_optim"``), or the name of a file or source."""
    if where.endswith(" "):
        return _Source("option", where), section
    if section is None and not isinstance(obj, _RunFields) and _SECTION_NAME.fullmatch(where):
        return _NO_SOURCE, where
    return _Source("named", where), section


def _shown(value: Any) -> str:
    if _is_number(value):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return repr(value)


def _value_error(source: _Source, dotted: str, raw: Any, requirement: str, bad: Any, hint: str = "") -> ConfigError:
    return ConfigError(f"{source.prefix(dotted, raw)}{dotted} must be {requirement}, got {_shown(bad)}{hint}")


def _join(section: str | None, key: str) -> str:
    return key if section is None else f"{section}.{key}"


def _type_name(tp: Any, plural: bool = False) -> str:
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
             bool: ("a boolean", "booleans")}
    if tp in names:
        return names[tp][plural]
    return getattr(tp, "__name__", str(tp))


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NULL_WORDS = ("null", "~")


def parse_free_value(text: str) -> Any:
    """A command-line value for a key whose type the config does not know yet.

    YAML 1.2's core rules, not YAML 1.1's: ``off``, ``no``, ``yes`` and ``on`` stay words (the
    declaring dataclass gives them a type); ``true``/``false``, ``null``, numbers and ``[...]`` /
    ``{...}`` are parsed.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in NULL_WORDS:
        return None
    for number in (int, float):
        try:
            return number(stripped)
        except ValueError:
            pass
    if stripped[:1] in ("[", "{"):
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError:
            return text
    return text


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as the annotation ``tp`` (the few kinds configs use), or :class:`_Invalid`.

    Strings (``--set`` values, quoted YAML) are converted by the field's type, so a string field
    keeps ``off`` or ``no`` as written and a boolean field accepts true/false/yes/no/on/off.
    """
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _coerce(value, typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if type(None) in options and (value is None or (isinstance(value, str) and value.strip().lower() in NULL_WORDS)):
            return None
        failures: list[_Invalid] = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except _Invalid as invalid:
                failures.append(invalid)
        requirements = [f.requirement for f in failures] + (["null"] if type(None) in options else [])
        raise _Invalid(" or ".join(requirements), value, next((f.hint for f in failures if f.hint), ""))
    if isinstance(value, str) and origin in (dict, list):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Invalid("a mapping of keys", value)
        return dict(value)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"a list of {_type_name(item_type, plural=True)}", value)
        try:
            return [_coerce(item, item_type) for item in value]
        except _Invalid as invalid:
            raise _Invalid(f"a list of {_type_name(item_type, plural=True)}", invalid.value) from None
    if tp is Any:
        return parse_free_value(value) if isinstance(value, str) else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise _Invalid("a boolean (true/false, yes/no, on/off)", value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _Invalid("an integer", value)
        try:
            return int(value)
        except ValueError:
            raise _Invalid("an integer", value) from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _Invalid("a number", value)
        try:
            return float(value)
        except ValueError:
            raise _Invalid("a number", value) from None
    if tp is str:
        if isinstance(value, bool):
            word = "on/yes/true" if value else "off/no/false"
            raise _Invalid("a string", value, f" (YAML reads an unquoted {word} as a boolean: quote it, e.g. \"off\")")
        if not isinstance(value, str):
            raise _Invalid("a string", value)
        return value
    if tp is os.PathLike:
        if not isinstance(value, os.PathLike):
            raise _Invalid("a path", value)
        return value
    raise TypeError(f"unsupported config type {tp!r}")


@functools.lru_cache(maxsize=None)
def _field_settings(cls: type) -> dict[str, tuple[Any, Rule | None]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], rule_of(f)) for f in dataclasses.fields(cls) if not f.metadata.get(_ADD_ON_SECTIONS)}


def _settings_of(obj_or_cls: Any) -> dict[str, tuple[Any, Rule | None]]:
    """Each setting of a section (dataclass or instance): name -> (annotation, declared rule).

    A :class:`RunConfig` adds the add-on sections after its own fields.
    """
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    declared = dict(_field_settings(cls))
    if issubclass(cls, _RunFields):
        declared.update({name: (kind, None) for name, kind in section_types().items()})
    return declared


def _sections_of(cls: type) -> list[str]:
    return [name for name, (tp, _) in _settings_of(cls).items() if dataclasses.is_dataclass(tp)]


def _update(obj: Any, values: Any, source: _Source, section: str | None) -> Any:
    """A copy of the dataclass ``obj`` with ``values`` (a mapping, nested for sections) applied, each
    checked against its declaration; unknown keys and bad values raise a one-line ConfigError."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source.context(section)}: expected a mapping of keys, got {values!r}")
    declared = _settings_of(obj)
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in declared:
            raise ConfigError(f"{source.context(section)}: unknown key {key!r}; "
                              f"valid keys: {', '.join(declared) or '(none)'}")
        tp, rule = declared[key]
        dotted = _join(section, key)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(tp) and dataclasses.is_dataclass(current):
            changes[key] = _update(current, raw, source, dotted)
            continue
        try:
            value = _coerce(raw, tp)
        except _Invalid as invalid:
            raise _value_error(source, dotted, raw, invalid.requirement, invalid.value, invalid.hint) from None
        if rule is not None and rule.options is not None:
            changes[key] = _update_mapping(current, value, rule.options, source, dotted)
            continue
        problem = rule.problem(value) if rule is not None else None
        if problem is not None:
            raise _value_error(source, dotted, raw, *problem)
        changes[key] = value
    return dataclasses.replace(obj, **changes)


def _update_mapping(current: dict, values: dict, options: type | str, source: _Source, dotted: str) -> dict:
    """A mapping setting whose keys are declared elsewhere, merged key by key: ``adapt.source_optim``
    (``optim`` keys, checked now), ``dataset_options`` (each dataset's, checked now),
    ``method_options`` (kept as written here; checked against the method once ``adapt.method`` is
    known, by :func:`_check_method_options`)."""
    if options == "method":
        return {**current, **{k: _coerce(v, Any) for k, v in values.items()}}
    if options == "dataset":
        DATASETS, split_spec = _lookup("data.datasets:DATASETS"), _lookup("data.datasets:split_spec")
        dataset_options_type = _lookup("data.datasets:dataset_options_type")

        merged = {name: dict(given) for name, given in current.items()}
        for name, given in values.items():
            registered = split_spec(str(name))[0]
            if registered not in DATASETS:
                raise ConfigError(f"{source.context(dotted)}: unknown key {name!r}; "
                                  f"valid keys: {', '.join(DATASETS.names())}")
            where = f"{dotted}.{registered}"
            try:
                given = _coerce(given, dict[str, Any])
            except _Invalid as invalid:
                raise _value_error(source, where, given, "a mapping of the dataset's options", invalid.value) from None
            parsed = _update(dataset_options_type(registered)(), given, source, where)
            merged.setdefault(registered, {}).update({k: getattr(parsed, k) for k in given})
        return merged
    parsed = _update(options(), values, source, dotted)
    return {**current, **{k: getattr(parsed, k) for k in values}}


def _flat(values: Any, prefix: str | None = None) -> dict[str, Any]:
    """Nested mapping -> {dotted key: value as given} (what an update touched, for messages)."""
    if not isinstance(values, Mapping) or not values:
        return {prefix: values} if prefix is not None else {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flat(value, _join(prefix, str(key))))
    return flat


def _blame(source: _Source, touched: dict[str, Any], keys: Iterable[str]) -> str:
    """The prefix naming the latest of ``keys`` (or a key under one) the update set, else the source."""
    keys = tuple(keys)
    for dotted in reversed(list(touched)):
        if any(dotted == k or dotted.startswith(f"{k}.") for k in keys):
            return source.prefix(dotted, touched[dotted])
    return source.prefix(None) if source.kind != "none" else ""


def _check_relations(obj: Any, section: str | None, source: _Source, touched: dict[str, Any] | None) -> None:
    """Every relation of ``obj``'s class and of its sections (those the update touched, or all when
    ``touched`` is None)."""
    for relation in getattr(type(obj), "relations", ()):
        keys = [_join(section, k) for k in (relation.key, *relation.others)]
        if touched is not None and not any(d == k or d.startswith(f"{k}.") for d in touched for k in keys):
            continue
        value, *others = (operator.attrgetter(k)(obj) for k in (relation.key, *relation.others))  # keys may be dotted
        if value is None or any(o is None for o in others) or relation.holds(value, *others):
            continue
        expects = relation.expects.format(keys=keys[1:], values=[_shown(o) for o in others])
        raise ConfigError(f"{_blame(source, touched or {}, keys)}{keys[0]} must be {expects}, got {_shown(value)}")
    for name in _sections_of(type(obj)):
        _check_relations(getattr(obj, name), _join(section, name), source, touched)


def _method_options_type(config: RunConfig) -> type:
    METHODS = _lookup("methods:METHODS")
    method = config.adapt.method
    if method not in METHODS:
        raise ConfigError(f"adapt.method must be {_quoted_choices(tuple(METHODS.names()))}, got {method!r}")
    return METHODS.get(method).Options


def _check_method_options(config: RunConfig, source: _Source, touched: dict[str, Any] | None) -> RunConfig:
    """``config`` with ``method_options`` checked against the ``Options`` of ``adapt.method`` and
    typed by them. A bad key is named with how it was set, or with ``adapt.method`` when choosing
    the method made a key set earlier wrong; ``touched`` None: every key, named without a source."""
    options_type = _method_options_type(config)
    parsed, typed = options_type(), {}
    for key, value in config.method_options.items():
        dotted = f"method_options.{key}"
        if touched is None:
            key_source = _NO_SOURCE
        elif dotted in touched:
            key_source, value = source, touched[dotted]  # the value as given, for the message
        elif "adapt.method" in touched:
            key_source = _Source("because", source.prefix("adapt.method", touched["adapt.method"]).removesuffix(": "))
        else:
            key_source = source
        parsed = _update(parsed, {key: value}, key_source, "method_options")
        typed[key] = getattr(parsed, key)
    _check_relations(parsed, "method_options", source if touched is not None else _NO_SOURCE, touched)
    return dataclasses.replace(config, method_options=typed)


def _check_run(config: RunConfig, source: _Source, touched: dict[str, Any]) -> RunConfig:
    """After an update of a whole config: the method's options and the relations the update touched."""
    if any(d == "adapt.method" or d.startswith("method_options") for d in touched):
        config = _check_method_options(config, source, touched)
    _check_relations(config, None, source, touched)
    return config


def _check_values(obj: Any, section: str | None) -> None:
    """Each setting of ``obj`` (recursively) against its type and rule, as if it had been set now."""
    for key, (tp, rule) in _settings_of(obj).items():
        value, dotted = getattr(obj, key), _join(section, key)
        if dataclasses.is_dataclass(tp) and dataclasses.is_dataclass(value):
            _check_values(value, dotted)
            continue
        if rule is not None and rule.options == "method":
            continue  # by _check_method_options
        _update(obj, {key: value}, _NO_SOURCE, section)


def check_section(options: Any, section: str) -> None:
    """Every setting of the section ``options`` (a dataclass instance, e.g. built with
    ``dataclasses.replace`` rather than set through a recipe or option) against its declaration,
    and the section's relations; the one-line ConfigError names ``section.key``."""
    _check_values(options, section)
    _check_relations(options, section, _NO_SOURCE, None)


def check_config(config: RunConfig) -> None:
    """Every rule of ``config`` at once, wherever its values came from (a recipe, options, or code
    such as ``dataclasses.replace``): each setting of each section against its declaration, every
    relation between keys, the options of ``adapt.method`` (its ``Options``) and of each dataset.
    Cheap and free of side effects: call it before any work. Raises the first broken rule as a
    one-line ConfigError naming the key."""
    _check_values(config, None)
    _check_relations(config, None, _NO_SOURCE, None)
    _check_method_options(config, _NO_SOURCE, None)


def _declaration(dotted: str) -> tuple[Any, Rule | None] | None:
    obj: Any = RunConfig
    *sections, key = dotted.split(".")
    for name in sections:
        declared = _settings_of(obj)
        if name not in declared or not dataclasses.is_dataclass(declared[name][0]):
            return None
        obj = declared[name][0]
    return _settings_of(obj).get(key)


def choices_of(dotted: str) -> tuple[str, ...] | None:
    """The words the key ``dotted`` (``camera_proxies.mode``) may be, or None for a key without a list."""
    declaration = _declaration(dotted)
    return declaration[1].allowed() if declaration is not None and declaration[1] is not None else None


def undeclared_keys(cls: type, section: str | None = None) -> list[str]:
    """The dotted keys of the dataclass ``cls`` (and its sections) declared without a rule
    (a plain default instead of :func:`setting`)."""
    missing = []
    for key, (tp, rule) in _settings_of(cls).items():
        if dataclasses.is_dataclass(tp):
            missing += undeclared_keys(tp, _join(section, key))
        elif rule is None:
            missing.append(_join(section, key))
    return missing


@functools.lru_cache(maxsize=None)
def options_of_function(function: Callable[..., Any]) -> type:
    """The keyword-only parameters of ``function`` as an options dataclass, each declaring its rule
    in its annotation, ``Annotated[str, Rule(choices=...)]`` (a dataset loader's options)."""
    hints = typing.get_type_hints(function, include_extras=True)
    specs = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        tp, metadata = hints.get(parameter.name, Any), {}
        if typing.get_origin(tp) is typing.Annotated:
            tp, *extras = typing.get_args(tp)
            metadata = {RULE_KEY: rule} if (rule := next((e for e in extras if isinstance(e, Rule)), None)) else {}
        default = None if parameter.default is inspect.Parameter.empty else parameter.default
        specs.append((parameter.name, tp, field(default=default, metadata=metadata)))
    return dataclasses.make_dataclass(f"{function.__name__}_options", specs)


def update_dataclass(obj: Any, values: Mapping[str, Any], where: str, *, section: str | None = None) -> Any:
    """A copy of dataclass ``obj`` with ``values`` applied, each checked against its declaration;
    unknown keys, values of the wrong type or out of their declared range, and broken relations
    are one-line ConfigErrors.

    ``where`` names the source in messages: an option followed by a space (``"--set "``: keys are
    shown as typed, ``--set optim.lr=-1``), the dotted name of the section ``obj`` is when it is
    checked on its own (``"method_options"``, ``"adapt.source_optim"``), or a file or other source
    (``"recipe.yaml"``, ``"saved config"``). ``section``: the dotted config path of ``obj``
    (``"clustering"``); None for the whole RunConfig.
    """
    source, section = _source_of(where, obj, section)
    touched = _flat(values, section)
    updated = _update(obj, values, source, section)
    if isinstance(updated, _RunFields):
        return _check_run(updated, source, touched)
    _check_relations(updated, section, source, touched)
    return updated
