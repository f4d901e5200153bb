"""Where a recipe named on the command line is found: UDAREID_RECIPES folders first, then the recipes
shipped in the package (importlib.resources), and a user's own file may extend a shipped recipe by name."""

import os
from importlib import resources

import pytest
from click.testing import CliRunner

from uda_reid.cli import cli
from uda_reid.config import find_recipe, load_recipe
from uda_reid.errors import ConfigError
from uda_reid.recipe_lookup import known_recipes, recipe_folders, recipes_dir


@pytest.fixture(autouse=True)
def no_user_folders(monkeypatch):
    monkeypatch.delenv("UDAREID_RECIPES", raising=False)


def test_the_shipped_recipes_are_the_package_data_of_uda_reid_recipes():
    assert recipes_dir() == resources.files("uda_reid.recipes")
    assert recipe_folders() == [recipes_dir()]
    assert find_recipe("spcl_synthx_to_synthm") == recipes_dir() / "spcl_synthx_to_synthm.yaml"
    assert {"spcl_usl", "supervised", "moco_luperson"} <= set(known_recipes())


def test_a_users_file_anywhere_extends_a_shipped_recipe_by_name(tmp_path, monkeypatch):
    mine = tmp_path / "elsewhere" / "my_spcl.yaml"
    mine.parent.mkdir()
    mine.write_text("# SpCL on synthm with longer epochs\nextends: spcl_synthx_to_synthm\nadapt: {iters_per_epoch: 99}\n")
    monkeypatch.chdir(tmp_path)
    config = load_recipe(find_recipe("elsewhere/my_spcl.yaml"))
    shipped = load_recipe(find_recipe("spcl_synthx_to_synthm"))
    assert config.adapt.method == "spcl" and config.adapt.iters_per_epoch == 99
    assert config.clustering == shipped.clustering and config.adapt.epochs == shipped.adapt.epochs


def test_udareid_recipes_folders_come_first_in_order_and_shadow_a_shipped_name(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "shared.yaml").write_text(f"# from {folder.name}\nadapt: {{method: baseline}}\n")
    (second / "spcl_usl.yaml").write_text("# my own generic SpCL\nextends: spcl_usl\nadapt: {epochs: 3}\n")
    monkeypatch.setenv("UDAREID_RECIPES", os.pathsep.join([str(first), str(second)]))
    assert recipe_folders() == [first, second, recipes_dir()]
    assert find_recipe("shared") == first / "shared.yaml"
    assert find_recipe("spcl_usl") == second / "spcl_usl.yaml"
    # extends: of a shadowing file with its own name reaches past it to the shipped recipe
    assert load_recipe(find_recipe("spcl_usl")).adapt.epochs == 3
    assert known_recipes()["spcl_usl"] == second / "spcl_usl.yaml" and "spcl_synthx_to_synthm" in known_recipes()


def test_an_unknown_recipe_names_the_folders_searched_and_the_known_names(tmp_path, monkeypatch):
    monkeypatch.setenv("UDAREID_RECIPES", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"'no_such' not found .*no_such\.yaml in {tmp_path}, .*known recipes: .*spcl_usl"):
        find_recipe("no_such")


def test_usl_reads_the_method_of_a_users_recipe_that_extends_a_shipped_one(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: spcl_synthx_to_synthm\nadapt: {epochs: 1}\n")
    result = CliRunner().invoke(cli, ["usl", "--dataset", "synthm", "--recipe", str(mine), "--method", "cap",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert f"--method cap contradicts --recipe {mine}, which is a recipe for method spcl" in result.output
