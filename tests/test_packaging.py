"""Package metadata a user's environment depends on, and what the built wheel carries and finds when installed."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def test_torch_has_no_upper_bound_so_installing_never_downgrades_a_users_torch():
    for requirement in PYPROJECT["dependencies"]:
        if re.match(r"torch(vision)?\b", requirement):
            assert "<" not in requirement and "==" not in requirement, requirement


def test_only_one_faiss_distribution_can_be_installed_by_the_package():
    requirements = PYPROJECT["dependencies"] + [r for extra in PYPROJECT.get("optional-dependencies", {}).values()
                                                for r in extra]
    faiss = [r for r in requirements if r.startswith("faiss")]
    assert len(faiss) == 1, f"faiss-cpu and faiss-gpu both provide the module faiss: {faiss}"


# --------------------------------------------------------------------------- what the wheel carries
REPOSITORY = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]
RECIPES = sorted(path.name for path in (REPOSITORY / "recipes").glob("*.yaml"))
BENCHMARKS = sorted(path.name for path in (REPOSITORY / "benchmarks").glob("*.py"))


def test_every_package_of_the_source_tree_is_listed_for_the_wheel():
    """The package list is explicit (recipes/ and benchmarks/ are mapped into uda_reid): a new subpackage
    missing from it would be missing from every installation."""
    source = {".".join(init.parent.relative_to(REPOSITORY).parts) for init in (REPOSITORY / "uda_reid").rglob("__init__.py")}
    missing = sorted(source - set(SETUPTOOLS["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert SETUPTOOLS["package-dir"] == {"uda_reid.recipes": "recipes", "uda_reid.benchmarks": "benchmarks"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the checkout (a build in place would leave build/ behind)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for folder in ("uda_reid", "recipes", "benchmarks"):
        shutil.copytree(REPOSITORY / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(root / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    return next((root / "dist").glob("uda_reid-*.whl"))


def test_the_wheel_carries_every_recipe_and_every_benchmark_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f"uda_reid/recipes/{name}" for name in RECIPES if f"uda_reid/recipes/{name}" not in names]
    missing += [f"uda_reid/benchmarks/{name}" for name in BENCHMARKS if f"uda_reid/benchmarks/{name}" not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert "uda_reid/cli/__main__.py" in names and "uda_reid/__main__.py" in names


def test_the_installed_recipe_lookup_finds_every_recipe_through_importlib_resources(wheel, tmp_path):
    """Unpacked as pip installs it and run from another folder: the recipes come from the installed
    package (never from the checkout), and ``udareid recipes`` lists them all."""
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    check = textwrap.dedent(f"""
        import json, sys
        from importlib import resources
        import uda_reid
        from uda_reid.config import find_recipe, load_recipe
        from uda_reid.recipe_lookup import known_recipes, recipes_dir
        site = {str(site)!r}
        assert uda_reid.__file__.startswith(site), uda_reid.__file__
        assert str(recipes_dir()) == str(resources.files("uda_reid.recipes")), recipes_dir()
        found = {{name: str(path) for name, path in known_recipes().items()}}
        assert all(path.startswith(site) for path in found.values()), found
        assert load_recipe(find_recipe("spcl_synthx_to_synthm")).adapt.method == "spcl"
        scripts = sorted(p.name for p in resources.files("uda_reid.benchmarks").iterdir() if p.name.endswith(".py"))
        print(json.dumps({{"recipes": sorted(found), "benchmarks": scripts}}))
    """)
    env = {key: value for key, value in os.environ.items() if key not in ("UDAREID_RECIPES", "UDAREID_PLUGINS")}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["recipes"] == [name.removesuffix(".yaml") for name in RECIPES]
    assert found["benchmarks"] == BENCHMARKS
    listed = subprocess.run([sys.executable, "-m", "uda_reid", "recipes"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert f"{len(RECIPES)} recipes, from {site / 'uda_reid' / 'recipes'} (shipped)" in listed.stdout
