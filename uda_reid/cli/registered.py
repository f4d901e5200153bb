"""Options that list what the registries hold: methods, add-on flags, backbones, clusterers and
pre-training methods, plug-ins included. No command names one by hand, so a plug-in (one module,
see ``uda_reid.plugins``) appears in the choices and the help with no edit here.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any, Callable

import click

from ..config import choices_of
from ..plugins import load_plugins

if TYPE_CHECKING:
    from ..addons.base import CliFlag
    from ..registry import Registry


class RegistryCommand(click.Command):
    """A command whose options come from ``options()``, called the first time they are needed (to parse
    or to show help), after the plug-ins are imported. Importing the registries imports torch, which
    ``import uda_reid.cli`` and ``udareid --help`` (a list of commands) never need."""

    def __init__(self, *args: Any, options: Callable[[], list[click.Parameter]], **kwargs: Any) -> None:
        self._pending_options: Callable[[], list[click.Parameter]] | None = options
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._pending_options is not None:
            load_plugins()
            built = self._pending_options()
            declared = {opt for param in self._params for opt in param.opts}
            clashes = [opt for param in built for opt in param.opts if opt in declared]
            if clashes:
                raise ValueError(f"udareid {self.name}: options declared twice: {', '.join(clashes)}")
            self._params.extend(built)
            self._pending_options = None
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value


def summary(thing: Any) -> str:
    """The first line of what a registered class or function says about itself: the docstring of its
    module (a method, add-on or pre-training method is one module), else its own."""
    for doc in (getattr(sys.modules.get(thing.__module__), "__doc__", None), thing.__doc__):
        if doc and doc.strip():
            return doc.strip().splitlines()[0].strip()
    return ""


def described_choices(registry: "Registry[Any]", names: list[str]) -> str:
    """``name: first line of its docstring`` for each name, for an option's help."""
    return " ".join(f"{name}: {summary(registry.get(name))}" for name in names)


def adaptation_methods() -> list[str]:
    """The registered methods ``adapt`` / ``usl`` run: those that cluster (the one that trains on the
    person ids, supervised training, is ``udareid train``)."""
    from ..methods import METHODS

    return [name for name in METHODS.names() if METHODS.get(name).clusters]


def method_option(default: str) -> click.Option:
    """``--method`` of ``adapt`` / ``usl``: a choice of the registered methods, each with its summary."""
    from ..methods import METHODS

    names = adaptation_methods()
    return click.Option(["--method"], type=click.Choice(names), default=None,
                        help=f"The method (default: the --recipe's, else {default}). {described_choices(METHODS, names)}")


def pretraining_methods() -> "Registry[Any]":
    """The registry of pre-training methods (``udareid pretrain --method``); the one place that says where it is."""
    from ..pretraining import PRETRAINERS

    return PRETRAINERS


def pretrain_method_option(default: str) -> click.Option:
    """``--method`` of ``pretrain``: a choice of the registered pre-training methods, each with its summary."""
    registry = pretraining_methods()
    names = registry.names()
    return click.Option(["--method"], type=click.Choice(names), default=None,
                        help=f"{described_choices(registry, names)} Default: the recipe's ({default}).")


def arch_option() -> click.Option:
    """``--arch`` of the training commands, naming the registered backbones."""
    from ..models.backbones import BACKBONES

    names = sorted(BACKBONES.names(), key=lambda name: [int(part) if part.isdigit() else part
                                                         for part in re.split(r"(\d+)", name)])  # resnet18 before resnet101
    return click.Option(["--arch"], default=None, help=f"Backbone ({', '.join(names)}).")


def clusterer_option() -> click.Option:
    """``--clusterer``: a choice of the registered clusterers."""
    from ..clustering import CLUSTERERS

    return click.Option(["--clusterer"], type=click.Choice(CLUSTERERS.names()), default=None,
                        help="Clustering of the Jaccard distance (clustering.clusterer; default: the recipe's).")


def add_on_flags() -> list[tuple[str, "CliFlag"]]:
    """(add-on name, flag) for every flag of every registered add-on, in registry order."""
    from ..addons import ADD_ONS

    return [(name, flag) for name in ADD_ONS.names() for flag in ADD_ONS.get(name).flags]


def flag_parameter(flag: "CliFlag") -> str:
    """The name the command's function receives a flag's value under (``--gds-hard`` -> ``gds_hard``)."""
    return flag.name.lstrip("-").replace("-", "_")


def add_on_options() -> list[click.Option]:
    """``adapt`` / ``usl`` options from ``AddOn.flags``: a switch for a flag that ``sets`` keys, a value
    (choices: those declared for its ``key``) for a flag with a ``key``."""
    options = []
    for _, flag in add_on_flags():
        decls = [flag.name, flag_parameter(flag)]
        if flag.key is not None:
            choices = choices_of(flag.key)
            value_type = click.Choice(list(choices)) if choices else click.STRING
            options.append(click.Option(decls, type=value_type, default=None, help=flag.help))
        else:
            options.append(click.Option(decls, is_flag=True, default=None, help=flag.help))
    return options


def flag_settings(flag: "CliFlag", value: Any) -> dict[str, Any]:
    """The dotted config keys a flag given as ``value`` sets."""
    return dict(flag.sets) if flag.key is None else {flag.key: value}


def given_add_on_flags(values: dict[str, Any]) -> list[tuple[str, "CliFlag", Any]]:
    """(add-on, flag, value) of every add-on flag the user gave, popped from the command's ``values``."""
    given = []
    for add_on, flag in add_on_flags():
        value = values.pop(flag_parameter(flag), None)
        if value is not None and value is not False:
            given.append((add_on, flag, value))
    return given
