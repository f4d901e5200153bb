"""Each CLI path on tiny data: output figures, and bad input as one clear line (exit code 1)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from uda_reid.cli import cli
from uda_reid.config import RunConfig, apply_overrides
from uda_reid.data.datasets import load_dataset
from uda_reid.models.checkpoints import save_checkpoint
from uda_reid.evaluation.protocol import evaluate_model
from uda_reid.evaluation.ranking import evaluate_ranking
from uda_reid.models.features import extract_features
from uda_reid.models import ReidModel

from layout_factory import write_market_style


@pytest.fixture()
def market_root(tmp_path):
    root = tmp_path / "data"
    write_market_style(
        root / "Market-1501-v15.09.15",
        train=["0002_c1s1_000001_00.jpg", "0002_c2s1_000002_00.jpg", "0007_c3s1_000003_00.jpg", "-1_c1s1_000004_00.jpg"],
        query=["0001_c1s1_000005_00.jpg", "0003_c2s1_000006_00.jpg"],
        gallery=["0001_c2s1_000007_00.jpg", "0003_c1s1_000008_00.jpg", "0000_c4s1_000009_00.jpg", "0001_c1s1_000010_00.jpg"],
    )
    return root


def test_data_stats_json_counts(market_root):
    result = CliRunner().invoke(cli, ["data", "stats", "--dataset", "market1501", "--root", str(market_root), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["train"] == {"images": 3, "ids": 2, "cameras": 3}
    assert stats["gallery"]["images"] == 4 and stats["query"]["ids"] == 2


def test_unknown_dataset_is_one_line_listing_known_ones(market_root):
    result = CliRunner().invoke(cli, ["data", "stats", "--dataset", "market15", "--root", str(market_root)])
    assert result.exit_code == 1
    assert "Error: unknown dataset 'market15' for --dataset; known: " in result.output
    assert "Traceback" not in result.output


def test_missing_data_root_names_the_folder(tmp_path):
    result = CliRunner().invoke(cli, ["data", "stats", "--dataset", "dukemtmc", "--root", str(tmp_path / "none")])
    assert result.exit_code == 1 and "DukeMTMC-reID" in result.output


def _run_checkpoint(tmp_path):
    config = apply_overrides(RunConfig(), {"model.arch": "resnet18", "data.height": 32, "data.width": 16, "data.workers": 0,
                                           "data.normalization": "imagenet"})
    torch.manual_seed(0)
    model = ReidModel("resnet18", num_classes=2)
    save_checkpoint(tmp_path / "best.pt", config, 0, model=model.state_dict(), num_classes=2)
    return config, model


def test_evaluate_run_checkpoint_matches_library_figures(tmp_path, market_root):
    config, model = _run_checkpoint(tmp_path)
    expected = evaluate_model(model, load_dataset("market1501", market_root), config.data, progress=False)
    result = CliRunner().invoke(
        cli,
        ["evaluate", "--dataset", "market1501", "--weights", str(tmp_path / "best.pt"),
         "--data-root", str(market_root), "--json", "--quiet", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["mAP"] == pytest.approx(expected["mAP"]) and figures["rank1"] == pytest.approx(expected["rank1"])


def test_evaluate_refuses_checkpoint_with_pickled_code(tmp_path, market_root):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pt")
    result = CliRunner().invoke(
        cli, ["evaluate", "--dataset", "market1501", "--weights", str(tmp_path / "module.pt"), "--data-root", str(market_root)]
    )
    assert result.exit_code == 1
    assert "module.pt contains pickled Python objects" in result.output


@pytest.mark.parametrize("left", ["last.pt", "config.yaml"])  # config.yaml alone: stopped before its first checkpoint
def test_train_refuses_to_overwrite_an_earlier_run(tmp_path, left):
    out = tmp_path / "run"
    out.mkdir()
    (out / left).write_bytes(b"x")
    result = CliRunner().invoke(cli, ["train", "--dataset", "market1501", "--out", str(out)])
    assert result.exit_code == 1 and "already holds a run; pass --resume" in result.output


def test_resume_names_a_folder_that_holds_no_run(tmp_path):
    result = CliRunner().invoke(cli, ["adapt", "--source", "market1501", "--target", "dukemtmc", "--out",
                                      str(tmp_path / "empty"), "--resume"])
    assert result.exit_code == 1 and "holds no run to resume (no config.yaml or last.pt)" in result.output


@pytest.mark.parametrize("flag, key", [(["--epochs", "3"], "adapt.epochs=1"), (["--seed", "2"], "seed=3"),
                                       (["--clusterer", "kmeans"], "clustering.clusterer=dbscan")])
def test_a_flag_and_a_set_that_contradict_each_other_are_refused_naming_the_key(tmp_path, flag, key):
    out = tmp_path / "r"
    result = CliRunner().invoke(cli, ["usl", "--dataset", "duke", "--out", str(out), *flag, "--set", key])
    assert result.exit_code == 1 and f"{key.split('=')[0]} is given twice" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_a_flag_and_a_set_that_agree_are_accepted():
    from uda_reid.cli.options import resolve_config

    config = resolve_config("spcl_usl_market1501", {"adapt.epochs": 3}, ("adapt.epochs=3",))
    assert config.adapt.epochs == 3


def test_unknown_recipe_key_in_set_is_named(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--dataset", "market1501", "--out", str(tmp_path / "r"), "--set", "optim.lrr=1"])
    assert result.exit_code == 1 and "unknown key 'lrr'" in result.output


TINY_SETS = [
    "device=cpu", "data.height=32", "data.width=16", "data.batch_size=16", "data.workers=0", "data.pad=2",
    "model.arch=resnet18", "optim.warmup_epochs=0", "clustering.k1=6", "clustering.k2=2",
    "clustering.min_samples=2", "adapt.iters_per_epoch=2", "adapt.eval_every=1", "adapt.bn_groups=1",
]


def _sets():
    return [arg for item in TINY_SETS for arg in ("--set", item)]


@pytest.mark.parametrize(
    "command",
    [
        ["adapt", "--source", "market", "--target", "duke"],
        ["usl", "--dataset", "duke", "--clusterer", "kmeans", "--no-tensorboard"],
        ["usl", "--dataset", "duke", "--precision", "bf16"],
    ],
)
def test_adapt_and_usl_commands_run_and_save_the_resolved_config(tmp_path, command):
    from tiny_reid_data import write_two_domains

    data_root = write_two_domains(tmp_path / "data")
    out = tmp_path / "run"
    bf16_size = ["--set", "data.height=64", "--set", "data.width=32"] if "bf16" in command else []  # tiny_reid_data.BF16_SIZE
    args = command + ["--data-root", str(data_root), "--out", str(out), "--epochs", "1", "--quiet", *_sets(), *bf16_size]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "initial: mAP" in result.output and "adapted: mAP" in result.output
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["target"] == "dukemtmc" and saved["adapt"]["epochs"] == 1 and saved["data"]["height"] == (64 if bf16_size else 32)
    assert saved["source"] == ("market1501" if command[0] == "adapt" else None)
    assert saved["precision"] == ("bf16" if "--precision" in command else "fp32")
    assert saved["tensorboard"] == ("--no-tensorboard" not in command)
    assert (out / "tensorboard").is_dir() == saved["tensorboard"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    # Running again into the same folder without --resume is refused; with --resume it is a no-op run.
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "pass --resume" in again.output


def test_adapt_unknown_method_is_one_line_naming_every_registered_method_that_clusters(tmp_path):
    from uda_reid.methods import METHODS

    result = CliRunner().invoke(cli, ["adapt", "--source", "market", "--target", "duke", "--method", "mmt", "--out", str(tmp_path / "r")])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "'--method': 'mmt' is not one of" in errors[0], result.output
    clustering = [name for name in METHODS.names() if METHODS.get(name).clusters]
    assert clustering and all(f"'{name}'" in errors[0] for name in clustering)
    assert not (tmp_path / "r").exists()


def test_evaluate_rerank_uses_k_reciprocal_re_ranking(tmp_path, market_root, monkeypatch):
    from tiny_reid_data import write_two_domains
    from uda_reid.evaluation import rerank as rerank_module
    from uda_reid.evaluation.rerank import re_rank, re_rank_chunks

    calls = []
    monkeypatch.setattr(rerank_module, "re_rank_chunks",
                        lambda q, g, *a, **kw: calls.append(len(q)) or re_rank_chunks(q, g, *a, **kw))

    data_root = write_two_domains(tmp_path / "two_domains")
    config, model = _run_checkpoint(tmp_path)
    data = load_dataset("dukemtmc", data_root)
    expected = evaluate_model(model, data, config.data, progress=False, rerank=re_rank_chunks)
    # the chunked ranking equals ranking the whole re-ranked matrix
    features = extract_features(model, list(data.query) + list(data.gallery), config.data, progress=False)
    whole = evaluate_ranking(re_rank(features[: len(data.query)], features[len(data.query):]),
                             *(np.array([getattr(s, key) for s in samples]) for key, samples in
                               (("pid", data.query), ("pid", data.gallery), ("camid", data.query), ("camid", data.gallery))))
    assert expected["mAP"] == pytest.approx(100 * whole["mAP"])
    args = ["evaluate", "--dataset", "dukemtmc", "--weights", str(tmp_path / "best.pt"), "--json", "--quiet", "--device", "cpu"]
    result = CliRunner().invoke(cli, args + ["--rerank", "--data-root", str(data_root)])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["rerank"] is True and figures["mAP"] == pytest.approx(expected["mAP"])
    assert calls[-1] == 8  # the CLI re-ranked the 8 queries
    # Too few images for k1 = 20 is one clear line, not a traceback.
    small = CliRunner().invoke(cli, [*args[:1], "--dataset", "market1501", *args[3:], "--rerank", "--data-root", str(market_root)])
    assert small.exit_code == 1 and "Error: k1+1" in small.output, small.output


def test_synth_sizes_are_kept_by_later_runs_and_rerunning_is_safe(tmp_path):
    root = tmp_path / "data"
    args = ["synth", "--domain", "synthx", "--data-root", str(root), "--num-train-ids", "3", "--num-test-ids", "2", "--quiet"]
    first = CliRunner().invoke(cli, args + ["--montage", str(tmp_path / "m.png")])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "m_synthx.png").read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    # A run that names the domain without sizes uses the generated folder as it is.
    assert load_dataset("synthx", root).num_train_ids == 3


def test_usl_baseline_with_gds_hard_then_plot_distances_regenerates_the_histograms(tmp_path):
    from tiny_reid_data import write_two_domains

    data_root = write_two_domains(tmp_path / "data")
    out = tmp_path / "run"
    args = ["usl", "--dataset", "duke", "--method", "baseline", "--gds-hard", "--data-root", str(data_root),
            "--out", str(out), "--epochs", "1", "--quiet", *_sets()]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adapt"]["method"] == "baseline" and saved["gds"]["enabled"] and saved["gds"]["hard_mining"]
    written = json.loads((out / "distances.json").read_text())
    (out / "distances.json").unlink()
    (out / "distances.png").unlink()
    result = CliRunner().invoke(cli, ["plot-distances", "--run", str(out), "--data-root", str(data_root), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "train: positive" in result.output and "test: positive" in result.output
    # the last checkpoint is the model the run ended with, so the histograms come out the same
    assert json.loads((out / "distances.json").read_text()) == written
    assert (out / "distances.png").exists()


def test_plot_distances_names_a_folder_without_a_checkpoint(tmp_path):
    result = CliRunner().invoke(cli, ["plot-distances", "--run", str(tmp_path)])
    assert result.exit_code == 1 and f"--run {tmp_path}: no last.pt in the run folder" in result.output


def test_usl_pplr_with_camera_proxies_then_inspect_agreement_draws_the_extremes(tmp_path):
    from tiny_reid_data import write_two_domains

    data_root = write_two_domains(tmp_path / "data")
    out = tmp_path / "run"
    args = ["usl", "--dataset", "duke", "--method", "pplr", "--camera-proxies", "pplr", "--data-root", str(data_root),
            "--out", str(out), "--epochs", "1", "--quiet", *_sets(), "--set", "method_options.agreement_k=4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adapt"]["method"] == "pplr" and saved["camera_proxies"]["mode"] == "pplr"
    result = CliRunner().invoke(cli, ["inspect-agreement", "--run", str(out), "--data-root", str(data_root), "--count", "3"])
    assert result.exit_code == 0, result.output
    assert (out / "agreement_extremes_epoch001.png").exists() and "epoch 1: agreement mean" in result.output
    missing = CliRunner().invoke(cli, ["inspect-agreement", "--run", str(out), "--epoch", "7"])
    assert missing.exit_code == 1 and "--epoch 7: no agreement scores saved for it; saved epochs: 1" in missing.output


def test_data_stats_finds_the_nested_layout_peers_use(tmp_path):
    root = tmp_path / "data"
    write_market_style(
        root / "market1501" / "Market-1501-v15.09.15",
        train=["0002_c1s1_000001_00.jpg", "0007_c3s1_000003_00.jpg"],
        query=["0001_c1s1_000005_00.jpg"],
        gallery=["0001_c2s1_000007_00.jpg"],
    )
    result = CliRunner().invoke(cli, ["data", "stats", "--dataset", "market1501", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert "layout: market1501/Market-1501-v15.09.15/ (Market-style folders)" in result.output


def test_camera_proxies_off_is_the_word_off_for_the_flag_and_for_set(tmp_path):
    from tiny_reid_data import write_two_domains

    data_root = write_two_domains(tmp_path / "data")
    out = tmp_path / "run"
    args = ["usl", "--dataset", "duke", "--method", "pplr", "--camera-proxies", "off", "--data-root", str(data_root),
            "--out", str(out), "--epochs", "1", "--quiet", *_sets(), "--set", "method_options.agreement_k=4",
            "--set", "camera_proxies.mode=off"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["camera_proxies"]["mode"] == "off"
    assert "loss_camera" not in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def test_camera_proxies_on_cap_itself_are_named(tmp_path):
    result = CliRunner().invoke(cli, ["usl", "--dataset", "duke", "--method", "cap", "--camera-proxies", "cap",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "--camera-proxies cap: method cap already is camera proxies; drop --camera-proxies" in result.output


def test_method_comes_from_the_recipe_and_a_contradicting_method_is_refused(tmp_path):
    from tiny_reid_data import write_two_domains

    data_root = write_two_domains(tmp_path / "data")
    out = tmp_path / "run"
    # The GDS-H paper recipe with the tiny sizes: it trains the baseline with GDS-H, without --method.
    args = ["adapt", "--recipe", "gds_market1501_to_dukemtmc", "--source", "market1501", "--target", "dukemtmc",
            "--data-root", str(data_root), "--out", str(out), "--epochs", "1", "--quiet", *_sets(),
            "--set", "adapt.source_pretrain_epochs=0", "--set", "adapt.passes_per_epoch=0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adapt"]["method"] == "baseline" and saved["gds"]["enabled"] and saved["gds"]["hard_mining"]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_id", "loss_triplet", "loss_gds", "loss_gds_hard"} <= set(row), row
    conflict = CliRunner().invoke(cli, ["adapt", "--recipe", "gds_market1501_to_dukemtmc", "--method", "spcl",
                                        "--source", "market1501", "--target", "dukemtmc", "--out", str(tmp_path / "x")])
    assert conflict.exit_code == 1
    assert ("--method spcl contradicts --recipe gds_market1501_to_dukemtmc, which is a recipe for method baseline"
            in conflict.output)


@pytest.mark.parametrize("method, nested", [("cap", True), ("cluster_contrast", False)])
def test_usl_cap_and_cluster_contrast_run_their_paper_recipes_on_the_market_layout(tmp_path, method, nested):
    import shutil

    from tiny_reid_data import write_two_domains

    data_root = write_two_domains(tmp_path / "data")
    if nested:  # as SpCL / cluster-contrast / PPLR keep it: <root>/market1501/Market-1501-v15.09.15/
        (data_root / "market1501").mkdir()
        shutil.move(str(data_root / "Market-1501-v15.09.15"), str(data_root / "market1501"))
    out = tmp_path / "run"
    args = ["usl", "--dataset", "market1501", "--method", method, "--data-root", str(data_root), "--out", str(out),
            "--epochs", "1", "--quiet", *_sets(), "--set", "data.num_instances=4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adapt"]["method"] == method and saved["target"] == "market1501"
    # the published setting's own values came from its recipe (cap_usl_market1501 / cluster_contrast_usl_market1501)
    expected = {"cap": (0.5, "avg", "proxy_balanced"), "cluster_contrast": (0.6, "gem", "multi_gallery")}[method]
    assert (saved["clustering"]["eps"], saved["model"]["pooling"]) == expected[:2]
    assert f"{expected[2]} batches" in (out / "log.txt").read_text()
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert ("loss_cap" if method == "cap" else "loss_cluster") in row and "clusters" in row


def test_a_method_without_a_recipe_for_the_task_is_named(tmp_path):
    result = CliRunner().invoke(cli, ["adapt", "--method", "cap", "--source", "market", "--target", "duke",
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "no recipe for --method cap in UDA (adapt): looked for cap_market1501_to_dukemtmc and cap_uda" in result.output


def test_train_resumed_after_a_kill_ends_with_the_uninterrupted_rows_and_weights(tmp_path, monkeypatch):
    from tiny_reid_data import metrics_rows, write_two_domains

    from uda_reid.engine import run_checkpoints
    from uda_reid.models.checkpoints import load_checkpoint, save_checkpoint

    data_root = write_two_domains(tmp_path / "data")

    def train(out, *extra):
        return CliRunner().invoke(cli, ["train", "--dataset", "market1501", "--data-root", str(data_root), "--out", str(out),
                                        "--epochs", "3", "--quiet", *_sets(), "--set", "train.iters_per_epoch=2",
                                        "--set", "train.eval_every=1", *extra])

    assert train(tmp_path / "full").exit_code == 0

    def killed(path, config, epoch, **state):  # the process dies right after epoch 2's last.pt
        save_checkpoint(path, config, epoch, **state)
        if path.name == "last.pt" and epoch == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(run_checkpoints, "save_checkpoint", killed)
        assert train(tmp_path / "cut").exit_code != 0
    assert train(tmp_path / "cut").exit_code == 1  # a started run is never silently redone
    result = train(tmp_path / "cut", "--resume")
    assert result.exit_code == 0, result.output

    def comparable(run):
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in metrics_rows(run)]

    assert comparable(tmp_path / "cut") == comparable(tmp_path / "full")
    from tiny_reid_data import tensorboard_events

    def shown(run):  # what TensorBoard shows: the redone epoch once, as the uninterrupted run has it
        return {tag: points for tag, points in tensorboard_events(run).items() if not tag.endswith("seconds")}

    assert shown(tmp_path / "cut") == shown(tmp_path / "full") and "retrieval/mAP" in shown(tmp_path / "full")
    full, cut = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_fp16_on_a_cpu_is_one_line_naming_the_alternatives(tmp_path):
    from tiny_reid_data import write_two_domains

    data_root = write_two_domains(tmp_path / "data")
    result = CliRunner().invoke(cli, ["usl", "--dataset", "duke", "--precision", "fp16", "--data-root", str(data_root),
                                      "--out", str(tmp_path / "run"), "--quiet", *_sets()])
    assert result.exit_code == 1
    assert "Error: precision fp16 needs a GPU" in result.output and "use bf16" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("module", ["uda_reid", "uda_reid.cli"])  # uda_reid.cli: the form torchrun starts
def test_python_dash_m_runs_the_same_command_line(module, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: udareid [OPTIONS] COMMAND" in result.stdout and "recipes" in result.stdout
    wrong = subprocess.run([sys.executable, "-m", module, "no-such-command"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert wrong.returncode == 2 and "No such command 'no-such-command'" in wrong.stderr


def test_recipes_lists_every_shipped_recipe_with_its_command_method_and_description():
    from uda_reid.recipe_lookup import known_recipes

    result = CliRunner().invoke(cli, ["recipes", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in map(json.loads, result.output.splitlines())}
    assert list(rows) == list(known_recipes())
    assert {k: rows["spcl_synthx_to_synthm"][k] for k in ("command", "method", "datasets")} == {
        "command": "adapt", "method": "spcl", "datasets": "synthx -> synthm"}
    assert rows["spcl_synthx_to_synthm"]["description"].startswith("SpCL UDA on the built-in synthetic domains")
    assert (rows["moco_synthetic"]["command"], rows["moco_synthetic"]["method"]) == ("pretrain", "moco")
    assert (rows["supervised"]["command"], rows["spcl_usl"]["datasets"]) == ("train", "any")
    table = CliRunner().invoke(cli, ["recipes"])
    assert table.exit_code == 0 and f"{len(rows)} recipes, from " in table.output
