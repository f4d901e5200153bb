"""Where recipes are found: the user's folders first, then the recipes shipped inside the package.

The shipped recipes are package data (``uda_reid.recipes``, the repository's top-level ``recipes/``
folder), read through :mod:`importlib.resources`, so an installed wheel finds them from any
working directory. ``UDAREID_RECIPES`` names more folders (``os.pathsep``-separated) searched
before them: a plug-in's recipes, or a user's own settings that shadow a shipped one by name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from importlib import resources
from pathlib import Path

from .errors import ConfigError

#: The package holding the shipped recipes.
SHIPPED_RECIPES = "uda_reid.recipes"
#: The environment variable naming more recipe folders, searched first.
RECIPES_ENV = "UDAREID_RECIPES"
SUFFIXES = (".yaml", ".yml")

_extracted = contextlib.ExitStack()  # shipped files copied out of a zipped install, removed at exit
atexit.register(_extracted.close)


def recipes_dir() -> Path:
    """The folder of the shipped recipes, as a path (a wheel installs it as ``uda_reid/recipes/``)."""
    folder = resources.files(SHIPPED_RECIPES)
    if isinstance(folder, Path):
        return folder
    return _extracted.enter_context(resources.as_file(folder))  # a zipped install: a temporary copy


def user_recipe_folders() -> list[Path]:
    """The folders named in ``UDAREID_RECIPES``, in order; a name that is not a folder is refused."""
    folders = [Path(entry).expanduser() for entry in os.environ.get(RECIPES_ENV, "").split(os.pathsep) if entry]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{RECIPES_ENV}: {folder} is not a folder (expected folders of recipe .yaml files, "
                              f"separated by {os.pathsep!r})")
    return folders


def recipe_folders() -> list[Path]:
    """Every folder searched for a recipe given by name, first match wins."""
    return [*user_recipe_folders(), recipes_dir()]


def known_recipes() -> dict[str, Path]:
    """Every recipe reachable by name (a user's shadows a shipped one of the same name), sorted by name."""
    found: dict[str, Path] = {}
    for folder in recipe_folders():
        for path in sorted(folder.iterdir()):
            if path.suffix in SUFFIXES and path.is_file():
                found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def recipe_named(name: str) -> Path | None:
    """The recipe file called ``name`` (``spcl_usl`` or ``spcl_usl.yaml``) in the recipe folders, or None."""
    stem = _stem(name)
    for folder in recipe_folders():
        for suffix in SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """A recipe file given as a path, or by name (``spcl_market`` -> ``spcl_market.yaml`` in the recipe folders)."""
    path = Path(name_or_path)
    if path.suffix in SUFFIXES and path.is_file():
        return path
    found = recipe_named(str(name_or_path))
    if found is not None:
        return found
    folders = ", ".join(str(folder) for folder in recipe_folders())
    raise ConfigError(
        f"recipe {str(name_or_path)!r} not found (looked for the file, and for {path.stem}.yaml in {folders}); "
        f"known recipes: {', '.join(known_recipes()) or '(none)'}"
    )


def _stem(name: str) -> str:
    stem = Path(name).name
    for suffix in SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem


def extends_target(recipe: Path, parent: str) -> Path:
    """The file ``extends: PARENT`` of ``recipe`` points to: a sibling in the recipe's own folder first (a
    family of recipes travels together), else a path or a recipe name in the recipe folders. A recipe
    that shadows one of its own name (``spcl_usl`` in a UDAREID_RECIPES folder saying ``extends:
    spcl_usl``) extends the one it shadows: the next of that name in the folders after its own."""
    name = _stem(str(parent))
    for suffix in SUFFIXES:
        sibling = recipe.parent / f"{name}{suffix}"
        if sibling.is_file() and not sibling.samefile(recipe):
            return sibling
    if _stem(recipe.name) != name:
        return find_recipe(parent)
    folders = recipe_folders()
    own = next((i for i, folder in enumerate(folders) if folder.resolve() == recipe.parent.resolve()), len(folders))
    for folder in folders[own + 1:]:
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    raise ConfigError(f"recipe file {recipe}: 'extends: {parent}' names the file itself, and no recipe folder after "
                      f"{recipe.parent} has a recipe {name}")
