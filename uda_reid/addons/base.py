"""What an add-on plugs into the training loop, and the registry of add-ons.

An add-on is a term added to whatever method trains: its options are one recipe section (``gds``,
``camera_proxies``), it is built from the config when that section switches it on, and the loop
calls the same hooks on every add-on, after the method's own: ``on_clusters`` (rebuild per-epoch
state from the clustering), ``loss`` (named loss tensors on the step's features), ``after_step``
(momentum updates), ``epoch_figures`` (logged per epoch), ``state_dict`` / ``load_state_dict``
(resume) and ``finish`` (pictures at the end of the run).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..methods.base import AdaptContext, Method, StepOutput
from ..registry import Registry

ADD_ONS: Registry[type["AddOn"]] = Registry("add-on", "the recipe section")


@dataclass(frozen=True)
class CliFlag:
    """A command-line flag of ``adapt`` / ``usl`` that an add-on declares (the CLI builds its options
    from ``AddOn.flags`` of every registered add-on, so an add-on is one module).

    ``sets``: the dotted keys a plain switch sets (``--gds`` -> ``{"gds.enabled": True}``); ``key``: the
    one dotted key an option with a value sets (``--camera-proxies cap`` -> ``camera_proxies.mode``),
    whose allowed values are that key's declared choices.
    """

    name: str  # "--gds"
    help: str
    sets: tuple[tuple[str, Any], ...] = ()
    key: str | None = None


class AddOn(abc.ABC):
    """Hooks the loop calls on every enabled add-on; under torchrun on every process.

    ``loss`` sees this process's slice of the batch, like a method's ``training_step``: a term that
    couples the samples of a batch gathers its inputs (``ctx.dist.gather_batch``), and state
    updated from a batch is updated from the gathered batch, so it stays identical on every rank.
    """

    #: The recipe section holding its options: a top-level section of every RunConfig
    #: (``config.<section>``), read and written like the sections ``uda_reid.config`` declares.
    section: str = ""
    #: The dataclass of that section, each field declared with ``uda_reid.config.setting`` (its type,
    #: range or choices), so it is checked wherever it is set.
    Options: type | None = None
    #: The flags ``adapt`` / ``usl`` offer for it (see :class:`CliFlag`).
    flags: tuple[CliFlag, ...] = ()
    #: Whether ``on_clusters`` needs the feature spaces (then supervised training extracts them too).
    needs_features: bool = False

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    @classmethod
    @abc.abstractmethod
    def enabled(cls, config: RunConfig) -> bool:
        """Whether ``config`` switches this add-on on."""

    def on_clusters(self, cluster_labels: np.ndarray, spaces: list[torch.Tensor], ctx: AdaptContext) -> dict[str, float]:
        """After the method's ``on_clusters``: ``cluster_labels`` (``N``, −1 outliers) of the target
        images and the feature spaces the method trains (``N×D`` each). Returns figures to log."""
        return {}

    @abc.abstractmethod
    def loss(self, step: StepOutput, batch: dict[str, dict[str, torch.Tensor]], ctx: AdaptContext) -> dict[str, torch.Tensor]:
        """Named loss tensors on the step's features (``step.spaces``, this process's slice)."""

    def after_step(self, ctx: AdaptContext) -> None:
        """After ``optimizer.step()``."""

    def epoch_figures(self) -> dict[str, float]:
        """Figures for the epoch's metrics row."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (resume)."""

    def finish(self, network: torch.nn.Module, target: Any, run_dir: Path, ctx: AdaptContext) -> None:
        """At the end of the run (rank 0): e.g. pictures that explain the add-on."""


def build_add_ons(config: RunConfig, method: Method) -> list[AddOn]:
    """The add-ons ``config`` switches on, in registry order; refuses one the method already is."""
    add_ons = []
    for name in ADD_ONS.names():
        kind = ADD_ONS.get(name)
        if not kind.enabled(config):
            continue
        if name in method.excludes_add_ons:
            raise ConfigError(f"{kind.section}: method {config.adapt.method} already is {name.replace('_', ' ')}; "
                              f"leave the add-on off (e.g. --camera-proxies off) or choose another method")
        add_ons.append(kind(config))
    return add_ons
