"""A third-party method is one module plus one recipe: named in UDAREID_PLUGINS (or by an entry point)
with its recipe folder in UDAREID_RECIPES, it is a --method choice with its help, ``udareid usl`` runs
it to the end, ``udareid recipes`` lists its recipe and the method contract tests cover it, with no
edit anywhere in uda_reid or its tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_reid_data import write_two_domains

from uda_reid import plugins
from uda_reid.cli import cli
from uda_reid.errors import ConfigError

REPOSITORY = Path(__file__).resolve().parents[1]
NAME = "centroid_softmax"  # the throw-away method's name, registered only in the subprocesses

METHOD_MODULE = '''
"""Centroid softmax (a test plug-in): cross-entropy of scaled cosine scores against the epoch's cluster centroids."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from uda_reid.centroids import class_centroids
from uda_reid.methods import METHODS, EpochLabels, Method, StepOutput


@dataclass
class CentroidSoftmaxOptions:
    temperature: float = 0.1


@METHODS.register("centroid_softmax")
class CentroidSoftmax(Method):
    Options = CentroidSoftmaxOptions

    def __init__(self, config) -> None:
        super().__init__(config)
        self.centroids: torch.Tensor | None = None

    def on_clusters(self, result, features, ctx) -> EpochLabels:
        labels = result.labels
        clustered = labels >= 0
        self.centroids = None
        if clustered.any():  # fixed for the epoch: rebuilt from the clustering, so a resumed run rebuilds the same
            rows = torch.from_numpy(clustered)
            self.centroids = class_centroids(features[rows], torch.from_numpy(labels[clustered])).to(ctx.device)
        return EpochLabels(labels, {"unclustered": int((~clustered).sum())})

    def training_step(self, ctx, batch) -> StepOutput:
        target = batch["target"]
        labels = target["label"].to(ctx.device)
        features = ctx.model(target["image"].to(ctx.device, non_blocking=True)).features
        scores = F.normalize(features.float(), dim=1) @ self.centroids.t() / self.options.temperature
        return StepOutput({"loss_centroid": F.cross_entropy(scores, labels)}, features)
'''

RECIPE = """\
# Centroid softmax unsupervised on any dataset (a test plug-in's recipe, sized for the tests' tiny images).
device: cpu
data: {height: 32, width: 16, batch_size: 16, num_instances: 4, workers: 0, pad: 2, eval_batch_size: 64}
model: {arch: resnet18}
optim: {optimizer: adam, lr: 0.00035, warmup_epochs: 0, milestones: [20]}
clustering: {k1: 6, k2: 2, min_samples: 2}
adapt: {method: centroid_softmax, epochs: 1, iters_per_epoch: 2, eval_every: 1, bn_groups: 1}
method_options: {temperature: 0.1}
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> dict[str, str]:
    """The environment of a user who wrote the method: its module on PYTHONPATH, its recipe folder."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "code").mkdir()
    (root / "code" / "centroid_softmax_plugin.py").write_text(METHOD_MODULE.lstrip())
    (root / "recipes").mkdir()
    (root / "recipes" / f"{NAME}_usl.yaml").write_text(RECIPE)
    python_path = os.pathsep.join([str(root / "code"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": python_path, "UDAREID_PLUGINS": "centroid_softmax_plugin",
            "UDAREID_RECIPES": str(root / "recipes"), "MPLBACKEND": "Agg"}


def udareid(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uda_reid", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_a_plugin_method_is_a_method_choice_with_its_docstring_as_help(plugin):
    result = udareid("usl", "--help", env=plugin)
    assert result.returncode == 0, result.stderr
    usage = " ".join(result.stdout.split())
    assert f"|{NAME}|" in usage or f"[{NAME}|" in usage or f"|{NAME}]" in usage, usage
    assert f"{NAME}: Centroid softmax (a test plug-in)" in usage


def test_recipes_lists_the_plugin_recipe_with_its_method_before_the_shipped_ones(plugin, tmp_path):
    result = udareid("recipes", env=plugin, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"{NAME}_usl "))
    assert row.split()[1:4] == ["usl", NAME, "any"], row
    assert "Centroid softmax unsupervised on any dataset" in row
    assert f"{plugin['UDAREID_RECIPES']} (UDAREID_RECIPES), then" in result.stdout


def test_usl_runs_a_plugin_method_to_the_end_from_its_own_recipe(plugin, tmp_path):
    data_root = write_two_domains(tmp_path / "data")
    out = tmp_path / "run"
    result = udareid("usl", "--method", NAME, "--dataset", "dukemtmc", "--data-root", data_root, "--out", out,
                     "--quiet", env=plugin, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "adapted: mAP" in result.stdout
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adapt"]["method"] == NAME and saved["method_options"] == {"temperature": 0.1}
    assert "loss_centroid" in (out / "metrics.jsonl").read_text()


def test_the_method_contract_tests_cover_a_plugin_method_with_no_edit(plugin, tmp_path):
    contract = REPOSITORY / "tests" / "methods" / "test_method_contract.py"
    result = subprocess.run([sys.executable, "-m", "pytest", str(contract), "-q", "-rA", "-p", "no:cacheprovider",
                             "-k", f"[{NAME}]"], env=plugin, cwd=REPOSITORY, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = {line.split("::")[1] for line in result.stdout.splitlines() if line.startswith("PASSED ")}
    contract_tests = {f"{name}[{NAME}]" for name in (
        "test_a_tiny_run_has_finite_losses_and_a_best_checkpoint_that_evaluate_reads",
        "test_a_run_killed_in_its_last_epoch_resumes_exactly",
        "test_an_unknown_option_is_refused_by_name",
        "test_a_bf16_step_gives_the_fp32_losses_within_three_percent",
    )}
    assert contract_tests <= passed, result.stdout[-4000:]


def test_a_missing_plugin_module_is_one_line_naming_the_variable(tmp_path):
    env = {**os.environ, "UDAREID_PLUGINS": "no_such_udareid_plugin"}
    result = udareid("usl", "--help", env=env, cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: UDAREID_PLUGINS=no_such_udareid_plugin: no module named 'no_such_udareid_plugin' "
                      "(expected importable module names separated by commas; is its folder on PYTHONPATH?)"], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture()
def fresh_plugins(monkeypatch):
    """``load_plugins`` as in a new process (it loads once per process); restored afterwards."""
    monkeypatch.setattr(plugins, "_loaded", None)
    monkeypatch.delenv("UDAREID_PLUGINS", raising=False)
    return monkeypatch


def test_an_entry_point_of_the_plugin_group_is_imported_on_first_use(fresh_plugins, tmp_path):
    (tmp_path / "entry_point_plugin_marker.py").write_text("IMPORTED = True\n")
    info = tmp_path / "udareid_marker_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: udareid-marker-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[uda_reid.plugins]\nmarker = entry_point_plugin_marker\n")
    fresh_plugins.syspath_prepend(str(tmp_path))
    fresh_plugins.delitem(sys.modules, "entry_point_plugin_marker", raising=False)
    assert "entry_point_plugin_marker" in plugins.load_plugins()
    assert sys.modules["entry_point_plugin_marker"].IMPORTED
    assert plugins.load_plugins() == plugins.load_plugins()  # once per process


def test_a_failed_plugin_load_is_named_again_on_the_next_use(fresh_plugins):
    fresh_plugins.setenv("UDAREID_PLUGINS", " , no_such_udareid_plugin")
    for _ in range(2):
        with pytest.raises(ConfigError, match="UDAREID_PLUGINS=.*no module named 'no_such_udareid_plugin'"):
            plugins.load_plugins()


def test_a_recipe_folder_that_does_not_exist_is_one_line_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("UDAREID_RECIPES", str(tmp_path / "nowhere"))
    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 1
    assert f"Error: UDAREID_RECIPES: {tmp_path / 'nowhere'} is not a folder" in result.output

