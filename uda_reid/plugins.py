"""Third-party plug-ins: modules imported once, before any registry is read, so that what they register
(methods, add-ons, backbones, clusterers, datasets...) is offered like the built-in ones.

Two ways to name one: the environment variable ``UDAREID_PLUGINS`` (comma-separated importable
module names, e.g. a file ``my_method.py`` on ``PYTHONPATH``), and, for an installed distribution,
an entry point of the group ``uda_reid.plugins`` whose value is the module to import. A plug-in's
recipes go in a folder named in ``UDAREID_RECIPES`` (see ``uda_reid.recipe_lookup``).
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from .errors import ConfigError

#: The environment variable naming plug-in modules.
PLUGINS_ENV = "UDAREID_PLUGINS"
#: The entry-point group installed plug-ins declare.
ENTRY_POINT_GROUP = "uda_reid.plugins"

_loaded: list[str] | None = None  # the plug-ins imported so far; None until the first call


def plugin_modules() -> list[str]:
    """The module names ``UDAREID_PLUGINS`` lists, in order."""
    return [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]


def load_plugins() -> list[str]:
    """Import every plug-in once per process (later calls return at once); returns what was loaded.

    A module that cannot be found is one line naming it and where it was named; an error inside a
    plug-in keeps its traceback (it is the plug-in's bug: the traceback runs through its file).
    """
    global _loaded
    if _loaded is not None:
        return list(_loaded)
    _loaded = []  # set first: a plug-in that reads a registry while it is imported must not recurse
    try:
        for name in plugin_modules():
            _import_plugin(name)
            _loaded.append(name)
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_entry_point(entry_point)
            _loaded.append(entry_point.value)
    except BaseException:
        _loaded = None  # the next call names the same fault again instead of going on without it
        raise
    return list(_loaded)


def _import_plugin(name: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is None or not (name == error.name or name.startswith(f"{error.name}.")):
            raise  # the plug-in itself imports something missing: its own traceback says what
        raise ConfigError(f"{PLUGINS_ENV}={os.environ.get(PLUGINS_ENV, '')}: no module named {name!r} (expected "
                          f"importable module names separated by commas; is its folder on PYTHONPATH?)") from None


def _load_entry_point(entry_point: metadata.EntryPoint) -> None:
    try:
        entry_point.load()
    except ModuleNotFoundError as error:
        module = entry_point.value.split(":")[0].strip()
        if error.name is None or not (module == error.name or module.startswith(f"{error.name}.")):
            raise
        raise ConfigError(f"entry point {entry_point.name} = {entry_point.value} (group {ENTRY_POINT_GROUP}): no "
                          f"module named {module!r}; is the distribution that declares it installed completely?") from None
