"""``udareid bench NAME``: the benchmark scripts, shipped as ``uda_reid.benchmarks`` (the repository's
``benchmarks/``), imported only when one is called."""

from __future__ import annotations

import importlib

import click

from .group import cli

#: bench command -> (module of uda_reid.benchmarks, its click command, what it measures).
SCRIPTS = {
    "clustering": ("clustering_stage", "clustering_bench",
                   "kNN, Jaccard and clustering: seconds per step and peak memory, against SpCL's own code"),
    "throughput": ("training_throughput", "main", "training and extraction images/s, fp32 against mixed precision"),
    "evaluation": ("evaluation_memory", "main", "evaluation at MSMT17 size: seconds and peak memory of the ranking"),
    "synthetic": ("synthetic_uda", "main", "every method on synthx -> synthm over seeds: mAP against direct transfer"),
    "pretraining": ("pretraining", "main", "random weights against MoCo / UP-ReID / DINO backbones, USL on synthm"),
    "recipe-cost": ("recipe_cost", "main", "a recipe's FLOPs, memory and images, with an estimated time on one GPU"),
    "gpu-check": ("gpu_check", "main", "the GPU check: main job, paper-size throughput, million-image clustering, tests"),
}


class _BenchmarkGroup(click.Group):
    """The scripts' own click commands, loaded by name when called (they import torch and the engine)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SCRIPTS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SCRIPTS:
            return None
        module, command, _ = SCRIPTS[name]
        return getattr(importlib.import_module(f"uda_reid.benchmarks.{module}"), command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list from SCRIPTS: ``--help`` imports no benchmark (nor torch)."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, SCRIPTS[name][2]) for name in self.list_commands(ctx)])


@cli.group(cls=_BenchmarkGroup)
def bench() -> None:
    """Benchmarks that print JSON figures (the scripts in the repository's benchmarks/, installed with the package)."""
