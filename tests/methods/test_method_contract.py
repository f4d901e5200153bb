"""Contract tests every registered method (and add-on combination) gets for free.

A tiny run of 2 epochs × 2 iterations on the tests' images must give finite losses in every row, a
``best.pt`` that ``evaluate`` reads back to the logged mAP, and a run killed after its first epoch
that resumes to the uninterrupted rows and weights. In bf16 (the backbone under autocast, the rest
float32) a step gives the fp32 losses within 3 %. Unknown options are refused by name.
"""

import math

import pytest
from tiny_reid_data import BF16_SIZE, assert_resume_reaches_the_uninterrupted_run, metrics_rows, tiny_adapt_config, write_two_domains

from uda_reid.addons import ADD_ONS
from uda_reid.config import RunConfig, apply_overrides, choices_of
from uda_reid.data.datasets import load_dataset
from uda_reid.engine.loop import supervised_config
from uda_reid.errors import ConfigError
from uda_reid.evaluation.protocol import evaluate_model
from uda_reid.methods import METHODS, build_method
from uda_reid.models.factory import model_from_weights


def add_on_cases() -> dict[str, tuple[str, dict]]:
    """Every setting of every registered add-on's command-line flags, each on one method that takes it
    (in turn over the methods that cluster, so the add-ons meet different methods), and the first setting
    of each add-on that needs the feature spaces on every method that does not cluster (supervised
    training then extracts features it would not otherwise)."""
    cases, turn = {}, 0
    in_turn = [name for name in METHODS.names() if METHODS.get(name).clusters]
    for add_on in ADD_ONS.names():
        kind = ADD_ONS.get(add_on)
        settings = []
        for flag in kind.flags:
            if flag.key is None:
                settings.append((flag.name.lstrip("-"), dict(flag.sets)))
                continue
            for choice in choices_of(flag.key) or ():
                if kind.enabled(apply_overrides(RunConfig(), {flag.key: choice})):  # not the word that turns it off
                    settings.append((f"{flag.name.lstrip('-')}_{choice}", {flag.key: choice}))
        takers = [name for name in METHODS.names()
                  if METHODS.get(name).accepts_add_ons and add_on not in METHODS.get(name).excludes_add_ons]
        for label, overrides in settings:
            while in_turn[turn % len(in_turn)] not in takers:
                turn += 1
            method = in_turn[turn % len(in_turn)]
            cases[f"{label}+{method}"] = (method, overrides)
            turn += 1
        for method in (name for name in takers if kind.needs_features and not METHODS.get(name).clusters):
            label, overrides = settings[0]
            cases[f"{label}+{method}"] = (method, overrides)
    return cases


CASES = {**{name: (name, {}) for name in METHODS.names()}, **add_on_cases()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def tiny_run_config(method: str, overrides: dict):
    if not METHODS.get(method).clusters:  # trains on the person ids, with the train section
        return supervised_config(tiny_adapt_config(dataset="market1501", **{
            "train.epochs": 2, "train.iters_per_epoch": 2, "train.eval_every": 1, **overrides}))
    return tiny_adapt_config(target="dukemtmc", **{"adapt.method": method, **overrides})


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tiny_run_has_finite_losses_and_a_best_checkpoint_that_evaluate_reads(case, tmp_path, data_root):
    from uda_reid.engine.loop import adapt

    config = tiny_run_config(*CASES[case])
    adapt(config, tmp_path, data_root=data_root, progress=False)
    rows = [r for r in metrics_rows(tmp_path) if r["epoch"] > 0]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        losses = {k: v for k, v in row.items() if k.startswith("loss")}
        assert "loss" in losses and all(math.isfinite(v) for v in losses.values()), row
    best = max(r["mAP"] for r in metrics_rows(tmp_path) if "mAP" in r)
    model, saved = model_from_weights(str(tmp_path / "best.pt"))
    figures = evaluate_model(model, load_dataset(config.target, data_root), saved.data, progress=False)
    assert figures["mAP"] == pytest.approx(best, abs=1e-6)


# Every method (and every add-on setting) on the other backbone families: the LUPerson transformer (its
# registered code shrunk to 2 blocks of width 64, as the tests' images are 32×16) and ResNet-50-IBN-a.
SMALL_VIT = (64, 2, 2, True)
BACKBONE_CASES = {**{f"{case}@vit_small_ics": (case, "vit_small_ics") for case in sorted(CASES)},
                  **{f"{method}@resnet50_ibn_a": (method, "resnet50_ibn_a") for method in METHODS.names()}}


@pytest.fixture
def small_vit(monkeypatch):
    from uda_reid.models import vit

    monkeypatch.setitem(vit.VIT_SIZES, "vit_small_ics", SMALL_VIT)


@pytest.mark.parametrize("case", sorted(BACKBONE_CASES))
def test_every_method_and_add_on_trains_and_evaluates_on_every_backbone_family(case, tmp_path, data_root, small_vit):
    from uda_reid.engine.loop import adapt

    name, arch = BACKBONE_CASES[case]
    method, overrides = CASES[name]
    section = METHODS.get(method).settings_section
    pooling = "token" if arch.startswith("vit") else "avg"
    config = tiny_run_config(method, {**overrides, "model.arch": arch, "model.pooling": pooling,
                                      f"{section}.epochs": 1, f"{section}.eval_every": 1})
    adapt(config, tmp_path, data_root=data_root, progress=False)
    row = next(r for r in metrics_rows(tmp_path) if r["epoch"] == 1)
    losses = {k: v for k, v in row.items() if k.startswith("loss")}
    assert "loss" in losses and all(math.isfinite(v) for v in losses.values()), row
    model, saved = model_from_weights(str(tmp_path / "best.pt"))
    assert model.arch == arch and saved.data.normalization == "imagenet"  # auto, from the random initial weights
    figures = evaluate_model(model, load_dataset(config.target, data_root), saved.data, progress=False)
    assert figures["mAP"] == pytest.approx(max(r["mAP"] for r in metrics_rows(tmp_path) if "mAP" in r), abs=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_run_killed_in_its_last_epoch_resumes_exactly(case, tmp_path, data_root, monkeypatch):
    assert_resume_reaches_the_uninterrupted_run(tiny_run_config(*CASES[case]), tmp_path, data_root, monkeypatch,
                                                kill_after=2)  # after the row of epoch 2, before its last.pt


@pytest.mark.parametrize("method", METHODS.names())
def test_an_unknown_option_is_refused_by_name(method):
    with pytest.raises(ConfigError, match="no_such_knob"):  # when the config is built, at the latest by the method
        build_method(tiny_adapt_config(target="dukemtmc", **{"adapt.method": method,
                                                             "method_options": {"no_such_knob": 1}}))


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bf16_step_gives_the_fp32_losses_within_three_percent(case, tmp_path, data_root):
    from uda_reid.engine.loop import adapt

    method, overrides = CASES[case]
    section = METHODS.get(method).settings_section
    rows = {}
    for precision in ("fp32", "bf16"):
        config = tiny_run_config(method, {**overrides, f"{section}.epochs": 1, f"{section}.iters_per_epoch": 1,
                                          "precision": precision, **BF16_SIZE})
        adapt(config, tmp_path / precision, data_root=data_root, progress=False)
        rows[precision] = next(r for r in metrics_rows(tmp_path / precision) if r["epoch"] == 1)
    assert rows["bf16"].get("clusters") == rows["fp32"].get("clusters")  # the same pseudo-labels: the losses compare
    losses = [k for k in rows["fp32"] if k.startswith("loss")]
    assert losses and losses == [k for k in rows["bf16"] if k.startswith("loss")]
    for name in losses:
        assert rows["bf16"][name] == pytest.approx(rows["fp32"][name], rel=0.03, abs=0.02), name


def test_a_bf16_step_on_the_transformer_gives_the_fp32_losses_within_three_percent(tmp_path, data_root, small_vit):
    from uda_reid.engine.loop import adapt

    rows = {}
    for precision in ("fp32", "bf16"):
        config = tiny_run_config("cluster_contrast", {"model.arch": "vit_small_ics", "model.pooling": "token",
                                                      "adapt.epochs": 1, "adapt.iters_per_epoch": 1,
                                                      "precision": precision, **BF16_SIZE})
        adapt(config, tmp_path / precision, data_root=data_root, progress=False)
        rows[precision] = next(r for r in metrics_rows(tmp_path / precision) if r["epoch"] == 1)
    assert "backbone in bf16" in (tmp_path / "bf16" / "log.txt").read_text()
    assert rows["bf16"]["clusters"] == rows["fp32"]["clusters"]
    assert rows["bf16"]["loss"] == pytest.approx(rows["fp32"]["loss"], rel=0.03)


def test_hard_update_moves_each_cluster_once_towards_its_least_similar_instance():
    import torch

    from uda_reid.methods.cluster_contrast import hardest_instances

    rows = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    features = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.9], [-0.3, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 1, 0])
    picked, picked_labels = hardest_instances(features, labels, rows)
    assert picked_labels.tolist() == [0, 1]
    assert torch.equal(picked, features[[2, 3]])  # the lowest cosine to row 0 and to row 1
