"""Strict recipes and overrides: a misspelled key is an error, never silently ignored."""

import dataclasses

import pytest

from uda_reid.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    find_recipe,
    load_recipe,
    parse_set_options,
    recipes_dir,
)
from uda_reid.errors import ConfigError


def test_recipe_overrides_defaults_and_keeps_the_rest(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("dataset: dukemtmc\noptim:\n  lr: 1.0e-4\n  milestones: [5, 9]\n")
    config = load_recipe(path)
    assert config.dataset == "dukemtmc"
    assert config.optim.lr == 1e-4 and config.optim.milestones == [5, 9]
    assert config.optim.weight_decay == RunConfig().optim.weight_decay


def test_unknown_recipe_key_names_key_file_and_valid_keys(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.optim: unknown key 'lrr'; valid keys: optimizer, lr"):
        load_recipe(path)


def test_wrong_value_type_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.epochs must be an integer, got 'many'"):
        load_recipe(path)


def test_overrides_parse_yaml_values_and_nested_keys():
    config = apply_overrides(RunConfig(), parse_set_options(["optim.lr=2e-4", "model.extra_bn=true", "model.init=null"]))
    assert config.optim.lr == pytest.approx(2e-4)
    assert config.model.extra_bn is True and config.model.init is None
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        parse_set_options(["optim.lr"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        apply_overrides(RunConfig(), {"nope.x": 1})


def test_overrides_do_not_modify_the_input_config():
    config = RunConfig()
    apply_overrides(config, {"optim.lr": 1.0, "data.height": 64})
    assert config.optim.lr == RunConfig().optim.lr and config.data.height == 256


def test_config_round_trips_through_a_plain_dict():
    config = apply_overrides(RunConfig(), {"model.arch": "resnet18", "eval_datasets": ["synthm"]})
    assert config_from_dict(config_to_dict(config)) == config


def test_every_shipped_recipe_loads_strictly():
    recipes = sorted(recipes_dir().glob("*.yaml"))
    assert recipes, "recipes/ is empty"
    for path in recipes:
        assert isinstance(load_recipe(path), RunConfig), path


def test_every_published_setting_extends_its_method_base_recipe():
    """One base per method family (``<method>_uda`` / ``<method>_usl``); a published setting lists what differs."""
    import re

    for path in sorted(recipes_dir().glob("*.yaml")):
        name = path.stem
        if "synth" in name or name in {"supervised", "moco_luperson", "dino_luperson"} or re.fullmatch(r"\w+_(uda|usl)", name):
            continue  # bases (pre-training's: LUPerson's MoCo and TransReID-SSL's DINO settings), and the small CPU recipes that stand alone
        text = path.read_text()
        assert re.search(r"^extends: \w+$", text, re.M), f"{path.name} copies its family's settings instead of extends"
        assert len([line for line in text.splitlines() if line and not line.startswith("#")]) <= 15, path.name


def test_unknown_recipe_name_lists_known_ones():
    with pytest.raises(ConfigError, match="known recipes: .*supervised"):
        find_recipe("no_such_recipe")


def test_recipe_extends_another_and_overrides_its_keys(tmp_path):
    (tmp_path / "base.yaml").write_text("adapt: {method: baseline, epochs: 7}\nclustering: {eps: 0.4}\n")
    (tmp_path / "child.yaml").write_text("extends: base\nclustering: {k1: 11}\ngds: {enabled: true}\n")
    config = load_recipe(tmp_path / "child.yaml")
    assert (config.adapt.method, config.adapt.epochs) == ("baseline", 7)
    assert (config.clustering.eps, config.clustering.k1, config.gds.enabled) == (0.4, 11, True)


def test_shipped_gds_recipe_is_the_baseline_recipe_plus_gds_h():
    base = load_recipe(find_recipe("baseline_market1501_to_dukemtmc"))
    gds = load_recipe(find_recipe("gds_market1501_to_dukemtmc"))
    assert gds.gds.enabled and gds.gds.hard_mining and not base.gds.enabled
    assert dataclasses.replace(gds, gds=base.gds) == base


def test_recipe_extends_cycle_and_missing_parent_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match=r"'extends' makes a cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: no_such_parent\n")
    with pytest.raises(ConfigError, match="recipe 'no_such_parent' not found"):
        load_recipe(tmp_path / "c.yaml")


def test_set_values_are_typed_by_their_field_not_by_yaml_1_1():
    config = apply_overrides(RunConfig(), parse_set_options([
        "camera_proxies.mode=off", "method_options.self_paced=off", "model.init=off",
        "data.skip_unreadable=yes", "train.sync_bn=On", "optim.milestones=[5, 9]", "eval_datasets=[synthm]",
    ]))
    # string fields keep the words YAML 1.1 reads as booleans; the method's options get the method's types
    assert config.camera_proxies.mode == "off" and config.method_options["self_paced"] is False
    assert config.model.init == "off"
    # boolean fields take true/false, yes/no, on/off; lists parse
    assert config.data.skip_unreadable is True and config.train.sync_bn is True
    assert config.optim.milestones == [5, 9] and config.eval_datasets == ["synthm"]
    assert apply_overrides(config, {"data.skip_unreadable": "off"}).data.skip_unreadable is False


def test_method_options_get_their_type_from_the_method():
    from uda_reid.methods import METHODS

    config = apply_overrides(RunConfig(), parse_set_options(
        ["method_options.beta=0.3", "method_options.num_parts=2", "adapt.method=pplr"]))  # in any order
    assert config.method_options == {"beta": 0.3, "num_parts": 2}  # typed as set, by the method's Options
    options = METHODS.get("pplr").parse_options(config.method_options)
    assert options.beta == 0.3 and options.num_parts == 2
    with pytest.raises(ConfigError, match=r"^method_options.num_parts must be an integer, got 'two'$"):
        METHODS.get("pplr").parse_options({"num_parts": "two"})


def test_a_wrong_type_names_the_key_the_value_and_the_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"--set adapt.epochs=ten: adapt.epochs must be an integer, got 'ten'"):
        apply_overrides(RunConfig(), parse_set_options(["adapt.epochs=ten"]), "--set")
    with pytest.raises(ConfigError, match=r"--set data.skip_unreadable=maybe: data.skip_unreadable must be a boolean "
                                          r"\(true/false, yes/no, on/off\), got 'maybe'"):
        apply_overrides(RunConfig(), parse_set_options(["data.skip_unreadable=maybe"]), "--set")
    # an unquoted off in a recipe is YAML 1.1's false: the message says to quote it
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  normalization: off\n")
    with pytest.raises(ConfigError, match=r"r.yaml: data.normalization must be a string, got False .*quote it"):
        load_recipe(path)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("clustering.eps", "2", "--set clustering.eps=2: clustering.eps must be in (0, 1), got 2"),
    ("clustering.eps", "-1", "--set clustering.eps=-1: clustering.eps must be in (0, 1), got -1"),
    ("optim.lr", "-1", "--set optim.lr=-1: optim.lr must be > 0, got -1"),
    ("data.height", "0", "--set data.height=0: data.height must be >= 1, got 0"),
    ("adapt.epochs", "-3", "--set adapt.epochs=-3: adapt.epochs must be >= 0, got -3"),
    ("optim.milestones", "[5, -1]", "--set optim.milestones=[5, -1]: optim.milestones must be >= 0, got -1"),
    ("data.normalization", "imagent", "data.normalization must be one of auto, imagenet, lup, lup_pretrain, lup_vit, got 'imagent'"),
    ("pretrain.temperature", "0", "--set pretrain.temperature=0: pretrain.temperature must be > 0, got 0"),
    ("pretrain.queue_size", "-3", "--set pretrain.queue_size=-3: pretrain.queue_size must be >= 1, got -3"),
    ("pretrain.key_momentum", "7", "--set pretrain.key_momentum=7: pretrain.key_momentum must be in [0, 1), got 7"),
    ("pretrain.erasing_prob", "5", "--set pretrain.erasing_prob=5: pretrain.erasing_prob must be in [0, 1], got 5"),
    ("data.random_erasing_prob", "5", "data.random_erasing_prob must be in [0, 1], got 5"),
    ("optim.schedule", "linear", "optim.schedule must be 'step' or 'cosine', got 'linear'"),
    ("clustering.eps", "often", "clustering.eps must be in (0, 1) or 'auto', got 'often'"),
    ("adapt.method", "mmt", "adapt.method must be one of baseline, cap, cluster_contrast, pplr, spcl, supervised, got 'mmt'"),
    ("method_options.temperature", "0", "--set method_options.temperature=0: method_options.temperature must be > 0, got 0"),
    ("dataset_options.cuhk03.variant", "label", "dataset_options.cuhk03.variant must be 'labeled' or 'detected', got 'label'"),
    ("device", "gpu", "--set device=gpu: device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_out_of_range_values_are_named_with_the_key_as_written(key, value, message):
    with pytest.raises(ConfigError) as error:
        apply_overrides(RunConfig(), parse_set_options([f"{key}={value}"]), "--set")
    assert message in str(error.value)


def test_a_recipe_with_an_out_of_range_value_names_the_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("clustering: {eps: 1.5}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: clustering.eps must be in \(0, 1\), got 1.5"):
        load_recipe(recipe)


@pytest.mark.parametrize(("key", "value"), [
    ("data.flip_prob", "1"), ("data.flip_prob", "0"), ("optim.warmup_factor", "1"), ("clustering.eps", "auto"),
    ("clustering.eps", "0.99"), ("pretrain.key_momentum", "0"), ("train.label_smoothing", "0"), ("seed", "0"),
    ("device", "cuda:1"), ("target", "folder:/some/images"), ("eval_datasets", "[market, duke]"),
])
def test_values_on_a_closed_bound_or_of_an_other_allowed_form_are_accepted(key, value):
    apply_overrides(RunConfig(), parse_set_options([f"{key}={value}"]), "--set")


@pytest.mark.parametrize(("key", "value"), [
    ("optim.momentum", "1"), ("train.label_smoothing", "1"), ("clustering.eps", "0"), ("pretrain.temperature", "nan"),
    ("optim.lr", "inf"), ("model.last_stride", "3"), ("pretrain.crop_scale", "[0.9, 0.1]"), ("data.height", "2.5"),
])
def test_values_on_an_open_bound_or_not_finite_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"^--set {key}=.*: {key} must be "):
        apply_overrides(RunConfig(), parse_set_options([f"{key}={value}"]), "--set")


def test_the_transformer_and_ibn_recipes_hold_the_published_settings():
    """TransReID-SSL's cluster-contrast scripts and transreid_pytorch configs, SpCL's and cluster-contrast's
    IBN commands (each recipe cites the file and line of every value)."""
    from uda_reid.engine.run_configs import source_stage_config

    usl = load_recipe(find_recipe("cluster_contrast_vit_usl_market1501"))
    assert (usl.model.arch, usl.model.pooling, usl.model.drop_path) == ("vit_small_ics", "token", 0.3)
    assert (usl.optim.optimizer, usl.optim.lr, usl.optim.nesterov, usl.optim.weight_decay) == ("sgd", 3.5e-4, False, 5e-4)
    assert (usl.optim.schedule, usl.optim.warmup_epochs, usl.optim.milestones) == ("step", 0, [20, 40])
    assert (usl.data.batch_size, usl.data.num_instances, usl.data.pad, usl.data.normalization) == (256, 8, 10, "auto")
    assert (usl.clustering.eps, usl.clustering.k1, usl.clustering.k2, usl.clustering.min_samples) == (0.6, 30, 6, 4)
    assert (usl.adapt.epochs, usl.adapt.iters_per_epoch, usl.adapt.bn_groups) == (50, 200, 4)
    assert usl.method_options == {"temperature": 0.05, "momentum": 0.2, "hard_update": True}
    msmt = load_recipe(find_recipe("cluster_contrast_vit_usl_msmt17"))
    assert (msmt.clustering.eps, msmt.adapt.bn_groups, msmt.adapt.eval_every) == (0.7, 2, 50)

    uda = load_recipe(find_recipe("cluster_contrast_vit_msmt17_to_market1501"))
    assert (uda.source, uda.target, uda.clustering.eps, uda.adapt.source_pretrain_epochs) == ("msmt17", "market1501", 0.6, 120)
    stage = source_stage_config(uda)
    assert (stage.optim.optimizer, stage.optim.lr, stage.optim.weight_decay, stage.optim.bias_lr_factor) == ("sgd", 4e-4, 1e-4, 2.0)
    assert (stage.optim.schedule, stage.optim.warmup_epochs, stage.optim.warmup_factor, stage.optim.min_lr_factor) == (
        "cosine", 20, 0.01, 0.002)
    assert (stage.data.batch_size, stage.data.num_instances, stage.model.drop_path) == (64, 4, 0.1)
    assert (stage.train.epochs, stage.train.passes_per_epoch, stage.train.label_smoothing, stage.train.triplet_margin) == (
        120, 1.0, 0.0, 0.0)
    assert load_recipe(find_recipe("cluster_contrast_vit_market1501_to_msmt17")).clustering.eps == 0.7

    for name in ("spcl_ibn_usl_market1501", "spcl_ibn_market1501_to_msmt17", "spcl_ibn_msmt17_to_market1501"):
        ibn, plain = load_recipe(find_recipe(name)), load_recipe(find_recipe("spcl_uda" if "to" in name else "spcl_usl"))
        assert ibn.model.arch == "resnet50_ibn_a" and ibn.method_options == plain.method_options, name
    cc = load_recipe(find_recipe("cluster_contrast_ibn_usl_market1501"))
    assert (cc.model.arch, cc.model.pooling, cc.clustering.eps, cc.adapt.iters_per_epoch) == ("resnet50_ibn_a", "gem", 0.4, 400)
    assert (cc.data.batch_size, cc.data.num_instances, cc.method_options["momentum"], cc.method_options["hard_update"]) == (
        256, 16, 0.1, True)
