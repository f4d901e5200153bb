"""Recipes (with ``extends``), ``--set`` overrides and the saved ``config.yaml``: where a run's settings
come from, each value checked as it is set (:mod:`uda_reid.config.checking`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import ConfigError
from ..recipe_lookup import extends_target
from .checking import _check_run, _flat, _Source, _update, update_dataclass
from .sections import RunConfig, _RunFields

def load_recipe(path: str | os.PathLike, base: RunConfig | None = None, *, _chain: tuple[Path, ...] = ()) -> RunConfig:
    """Apply the recipe file at ``path`` on top of ``base`` (defaults when None).

    A recipe may start with ``extends: OTHER`` (a recipe name or path): OTHER is applied first and
    this file's keys override it, so a published variant (GDS on the baseline) repeats nothing.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe file {path} is not valid YAML: {error}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"recipe file {path}: expected a mapping of sections, got {type(data).__name__}")
    if "extends" in data:
        data = dict(data)
        parent_name = data.pop("extends")
        parent = extends_target(path, str(parent_name))
        chain = (*_chain, path.resolve())
        if parent.resolve() in chain:
            names = " -> ".join(p.name for p in (*chain, parent.resolve()))
            raise ConfigError(f"recipe file {path}: 'extends' makes a cycle ({names})")
        base = load_recipe(parent, base, _chain=chain)
    return update_dataclass(base or RunConfig(), data, str(path))


def apply_overrides(config: RunConfig, overrides: Mapping[str, Any], where: str = "option") -> RunConfig:
    """Apply dotted overrides such as ``{"optim.lr": 1e-4}`` or ``{"optim.lr": "1e-4"}``.

    A string is converted by the type of the field it sets (``"off"`` stays a string for a string
    field, ``"[20, 40]"`` becomes a list for a list field), never by YAML 1.1's guesses. Each value
    is checked against its declaration as it is set; the relations between keys and the method's
    options once all are set (so their order does not matter), each error naming the override as
    typed (``--set clustering.k1=3: clustering.k2 must be <= clustering.k1 (3), got 6``).
    """
    source = _Source("option", f"{where} ")
    touched: dict[str, Any] = {}
    for dotted, value in overrides.items():
        nested: Any = value
        for part in reversed(dotted.split(".")):
            nested = {part: nested}
        config = _update(config, nested, source, None)
        touched.update(_flat(value, dotted))
    return _check_run(config, source, touched)


def parse_set_options(items: tuple[str, ...] | list[str], option: str = "--set") -> dict[str, str]:
    """``["optim.lr=1e-4", ...]`` -> ``{"optim.lr": "1e-4"}`` (from a repeated ``option``)."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain data of a config or section; a RunConfig's add-on sections are top-level keys."""
    data = dataclasses.asdict(config)
    if isinstance(config, _RunFields):
        data.update(data.pop("add_on_sections"))
    return data


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    return update_dataclass(RunConfig(), data, "saved config")


def save_config(config: RunConfig, path: str | os.PathLike) -> None:
    from ..fileio import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))
