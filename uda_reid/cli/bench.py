"""``udareid bench NAME``: the benchmark scripts, shipped as ``uda_reid.benchmarks`` (the repository's
``benchmarks/``), imported only when one is called."""

from __future__ import annotations

import importlib

import click

from .group import cli

#: bench command -> (module of uda_reid.benchmarks, its click command).
SCRIPTS = {
    "clustering": ("clustering_stage", "clustering_bench"),
    "throughput": ("training_throughput", "main"),
    "evaluation": ("evaluation_memory", "main"),
    "synthetic": ("synthetic_uda", "main"),
    "pretraining": ("pretraining", "main"),
    "recipe-cost": ("recipe_cost", "main"),
}


class _BenchmarkGroup(click.Group):
    """The scripts' own click commands, loaded by name when called (they import torch and the engine)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SCRIPTS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SCRIPTS:
            return None
        module, command = SCRIPTS[name]
        return getattr(importlib.import_module(f"uda_reid.benchmarks.{module}"), command)


@cli.group(cls=_BenchmarkGroup)
def bench() -> None:
    """Benchmarks that print JSON figures (the scripts in the repository's benchmarks/, installed with the package)."""
