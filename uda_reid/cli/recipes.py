"""``udareid recipes``: what ``--recipe NAME`` can name, with the method, the data and the purpose of each."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import yaml

from ..config import load_recipe
from ..errors import ConfigError
from ..recipe_lookup import extends_target, known_recipes, recipes_dir, user_recipe_folders
from .group import cli


def description(path: Path) -> str:
    """The first sentence of the recipe's leading comment: what setting it is."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            if line.strip() or lines:
                break
            continue
        lines.append(line.lstrip("#").strip())
    return re.split(r"(?<=\.)\s+(?=[A-Z])", " ".join(lines), maxsplit=1)[0]


def _cut(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def sections(path: Path) -> set[str]:
    """The top-level keys the recipe sets, itself or through what it ``extends``: they tell what it trains."""
    keys: set[str] = set()
    seen: set[Path] = set()
    while path.resolve() not in seen:
        seen.add(path.resolve())
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"recipe file {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe file {path}: expected a mapping of sections, got {type(data).__name__}")
        keys |= set(data)
        if "extends" not in data:
            break
        path = extends_target(path, str(data["extends"]))
    return keys


def recipe_summary(name: str, path: Path) -> dict[str, Any]:
    """Name, command, method, datasets and description of one recipe (loaded strictly: a broken one is named)."""
    config = load_recipe(path)
    keys = sections(path)
    if "pretrain" in keys:
        command, method = "pretrain", config.pretrain.method
        datasets = " + ".join(config.pretrain.datasets) or "--images / --dataset"
    elif "adapt" in keys:
        method = config.adapt.method
        if name == f"{method}_uda":  # the generic recipes: the fallback of any dataset (pair)
            command, datasets = "adapt", "any -> any"
        elif name == f"{method}_usl":
            command, datasets = "usl", "any"
        elif config.source:
            command, datasets = "adapt", f"{config.source} -> {config.target}"
        else:
            command, datasets = "usl", str(config.target or config.dataset)
    else:
        command, method = "train", "supervised"
        datasets = "any" if name == "supervised" else config.dataset
    if config.eval_datasets:
        datasets += f" (also evaluated: {', '.join(config.eval_datasets)})"
    return {"name": name, "command": command, "method": method, "datasets": datasets,
            "description": description(path), "file": str(path)}


@cli.command("recipes")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per recipe (with its file).")
def recipes(as_json: bool) -> None:
    """The recipes --recipe NAME finds: the shipped ones, and those in the folders of $UDAREID_RECIPES first."""
    rows = [recipe_summary(name, path) for name, path in known_recipes().items()]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    headers = {"name": "recipe", "command": "command", "method": "method", "datasets": "datasets"}
    widths = {key: max([len(title), *(len(row[key]) for row in rows)]) for key, title in headers.items()}
    click.echo("  ".join(title.ljust(widths[key]) for key, title in headers.items()) + "  description")
    for row in rows:
        click.echo("  ".join(row[key].ljust(widths[key]) for key in headers) + f"  {_cut(row['description'])}")
    folders = [f"{folder} (UDAREID_RECIPES)" for folder in user_recipe_folders()] + [f"{recipes_dir()} (shipped)"]
    click.echo(f"\n{len(rows)} recipes, from {', then '.join(folders)}; a file of your own: --recipe FILE.yaml "
               f"(it may start with extends: NAME)")
