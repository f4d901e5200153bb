"""udareid pretrain on the training loop: a run folder with rows, a backbone that --init moco: reads cleanly,
exact resume, DDP (kills at any moment: tests/engine/test_training_runs.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from tiny_reid_data import assert_resume_reaches_the_uninterrupted_run, metrics_rows, tiny_pretrain_config, write_two_domains

from uda_reid.cli import cli
from uda_reid.config import find_recipe, load_recipe, save_config
from uda_reid.engine.pretrain import pretrain
from uda_reid.models import ReidModel
from uda_reid.models.checkpoint_import import load_init
from uda_reid.models.checkpoints import load_checkpoint
from uda_reid.pretraining import PRETRAINERS

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def test_pretraining_from_the_cli_gives_a_backbone_that_init_moco_reads_without_a_key_warning(tmp_path, data_root):
    recipe = tmp_path / "tiny.yaml"
    save_config(tiny_pretrain_config(**{"pretrain.method": "upreid"}), recipe)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["pretrain", "--dataset", "market", "--dataset", "duke", "--recipe", str(recipe),
                                      "--eval-on", "duke", "--data-root", str(data_root), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = metrics_rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"loss", "loss_global_nce", "loss_patch_nce", "loss_consistency", "lr"} <= set(r) for r in rows)
    assert all(r["loss"] == pytest.approx(r["loss_global_nce"] + r["loss_patch_nce"] + r["loss_consistency"], abs=1e-4)
               for r in rows)
    assert rows[1]["lr"] < rows[0]["lr"] and "mAP" in rows[1] and "mAP" not in rows[0]  # cosine; evaluated at the end
    assert (out / "metrics.png").exists() and f"--init moco:{out / 'backbone.pth'}" in result.output

    model = ReidModel("resnet18")
    report = load_init(model, f"moco:{out / 'backbone.pth'}")
    assert report.matched_fraction == 1.0 and not report.missing and not report.unexpected and not report.dropped_heads
    trained = load_checkpoint(out / "last.pt")["train_state"]["model"]  # the query encoder the loop trained
    backbone = {k.removeprefix("backbone."): v for k, v in trained.items() if k.startswith("backbone.")}
    for name, tensor in model.backbone.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # BN step counters carry no weights: not imported
            torch.testing.assert_close(tensor, backbone[name])
    # The frozen backbone's figure is what `udareid evaluate --weights moco:backbone.pth` measures, at the
    # image size of the run beside it (no recipe, no --set).
    evaluated = CliRunner().invoke(cli, ["evaluate", "--dataset", "duke", "--weights", f"moco:{out / 'backbone.pth'}",
                                         "--arch", "resnet18", "--data-root", str(data_root), "--json", "--quiet",
                                         "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"note: images at 32x16, the size of the run in {out / 'config.yaml'}" in evaluated.output
    assert json.loads(evaluated.stdout)["mAP"] == pytest.approx(rows[1]["mAP"], abs=0.01)
    resized = CliRunner().invoke(cli, ["evaluate", "--dataset", "duke", "--weights", f"moco:{out / 'backbone.pth'}",
                                       "--arch", "resnet18", "--data-root", str(data_root), "--json", "--quiet",
                                       "--device", "cpu", "--set", "data.height=64", "--set", "data.width=32"])
    assert resized.exit_code == 0 and "note: images at" not in resized.output, resized.output
    # The run's last.pt reads the same way, in evaluate (with the run's own image settings) and as --init.
    from_last = CliRunner().invoke(cli, ["evaluate", "--dataset", "duke", "--weights", str(out / "last.pt"),
                                         "--data-root", str(data_root), "--json", "--quiet", "--device", "cpu"])
    assert from_last.exit_code == 0, from_last.output
    assert json.loads(from_last.stdout)["mAP"] == pytest.approx(rows[1]["mAP"], abs=0.01)
    again = ReidModel("resnet18")
    assert load_init(again, str(out / "last.pt")).matched_fraction == 1.0
    assert all(torch.equal(a, b) for a, b in zip(again.backbone.state_dict().values(), model.backbone.state_dict().values()))


@pytest.mark.parametrize("method", PRETRAINERS.names())
def test_every_pretraining_method_resumes_to_the_uninterrupted_run(method, tmp_path, data_root, monkeypatch):
    config = tiny_pretrain_config(**{"pretrain.method": method})
    assert_resume_reaches_the_uninterrupted_run(config, tmp_path, data_root, monkeypatch, run=pretrain)
    queues = [load_checkpoint(tmp_path / name / "last.pt")["train_state"]["method"] for name in ("full", "cut")]
    assert queues[0].keys() == queues[1].keys()  # the method's own state (queues, DINO's teacher and centre)
    assert all(torch.equal(queues[0][k], queues[1][k]) for k in queues[0])
    if "queue.pointer" in queues[0]:  # MoCo's family: the queue went round as in the uninterrupted run
        assert int(queues[0]["queue.pointer"]) == (2 * 2 * 8) % 24


def test_the_paper_recipes_hold_the_published_settings():
    moco, upreid = (load_recipe(find_recipe(name)) for name in ("moco_luperson", "upreid_luperson"))
    assert (moco.pretrain.queue_size, moco.pretrain.key_momentum, moco.pretrain.temperature, moco.pretrain.dim) == \
        (65536, 0.999, 0.1, 128)
    assert (moco.optim.optimizer, moco.optim.lr, moco.optim.momentum, moco.optim.nesterov, moco.optim.weight_decay,
            moco.optim.schedule, moco.optim.warmup_epochs) == ("sgd", 0.3, 0.9, False, 1e-4, "cosine", 0)
    assert (moco.pretrain.batch_size, moco.pretrain.epochs, moco.data.height, moco.data.width) == (2560, 200, 256, 128)
    assert moco.data.normalization == "lup_pretrain" and moco.pretrain.crop_scale == [0.2, 1.0]
    assert (upreid.pretrain.method, upreid.pretrain.batch_size, upreid.optim.lr) == ("upreid", 800, 0.1)
    assert (upreid.pretrain.global_weight, upreid.pretrain.patch_weight, upreid.pretrain.stripes,
            upreid.pretrain.columns, upreid.pretrain.patch_temperature) == (0.8, 0.2, 4, 2, 0.1)
    dino = load_recipe(find_recipe("dino_luperson"))  # TransReID-SSL's dino/script/vit-s_ics_cfs_lup.sh + main_dino.py
    o = dino.pretrain
    assert (dino.model.arch, dino.model.drop_path, dino.data.height, dino.data.width) == ("vit_small_ics", 0.1, 256, 128)
    assert (o.method, o.epochs, o.batch_size, o.dim, o.local_crops, o.crop_scale, o.local_crop_scale) == (
        "dino", 100, 512, 65536, 8, [0.4, 1.0], [0.05, 0.4])
    assert (o.temperature, o.teacher_temperature, o.center_momentum, o.key_momentum, o.freeze_last_layer) == (
        0.1, 0.04, 0.9, 0.996, 1)
    assert (dino.optim.optimizer, dino.optim.lr, dino.optim.weight_decay, dino.optim.final_weight_decay,
            dino.optim.clip_grad_per_parameter, dino.optim.warmup_epochs, dino.optim.decay_bias_and_norm) == (
        "adamw", 1e-3, 0.04, 0.4, 3.0, 10, False)


def test_pretrain_names_what_is_wrong_in_one_line(tmp_path, data_root):
    neither = CliRunner().invoke(cli, ["pretrain", "--out", str(tmp_path / "x")])
    assert neither.exit_code == 1 and "needs --images DIR or --dataset NAME" in neither.output
    recipe = tmp_path / "big.yaml"
    save_config(tiny_pretrain_config(**{"pretrain.batch_size": 512, "pretrain.bn_groups": 2}), recipe)
    too_few = CliRunner().invoke(cli, ["pretrain", "--dataset", "duke", "--recipe", str(recipe), "--data-root",
                                       str(data_root), "--out", str(tmp_path / "y"), "--quiet"])
    assert too_few.exit_code == 1 and "fewer than one batch (pretrain.batch_size 512)" in too_few.output
    contradiction = CliRunner().invoke(cli, ["pretrain", "--dataset", "duke", "--recipe", "upreid_synthetic",
                                             "--method", "moco", "--out", str(tmp_path / "z")])
    assert contradiction.exit_code == 1 and "--method moco contradicts --recipe upreid_synthetic" in contradiction.output
    typo = CliRunner().invoke(cli, ["pretrain", "--dataset", "duke", "--recipe", str(recipe), "--set", "pretrain.mmd=cubic",
                                    "--data-root", str(data_root), "--out", str(tmp_path / "w")])
    assert typo.exit_code == 1 and "pretrain.mmd" in typo.output and "cubic" in typo.output
    assert not (tmp_path / "w").exists()  # refused before the run folder is made


@pytest.mark.slow
def test_two_process_pretraining_keeps_weights_and_queues_identical(tmp_path, data_root):
    config = tiny_pretrain_config(**{"pretrain.method": "upreid"})
    recipe = tmp_path / "tiny.yaml"
    save_config(config, recipe)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "uda_reid.cli",
               "pretrain", "--dataset", "market", "--dataset", "duke", "--recipe", str(recipe),
               "--data-root", str(data_root), "--out", str(tmp_path / "two"), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "epoch 2: weights and queue identical on all 2 processes" in log
    state = load_checkpoint(tmp_path / "two" / "last.pt")["train_state"]
    assert len(state["rng"]) == 2
    # Every process enqueued the keys of the whole global batch: 2 epochs × 2 steps × 8 keys.
    assert int(state["method"]["queue.pointer"]) == (2 * 2 * 8) % 24
    assert int(state["method"]["patch_queues.7.pointer"]) == (2 * 2 * 8) % 24
    assert [r["epoch"] for r in metrics_rows(tmp_path / "two")] == [1, 2]


def test_bf16_pretraining_runs_the_backbone_in_bf16_and_keeps_float32_weights(tmp_path, data_root, monkeypatch):
    from uda_reid.models.projection_encoder import ProjectionEncoder

    seen = []
    forward = ProjectionEncoder.forward

    def recording(self, images):
        seen.append(self.compute_dtype)
        return forward(self, images)

    monkeypatch.setattr(ProjectionEncoder, "forward", recording)
    config = tiny_pretrain_config(**{"precision": "bf16", "pretrain.epochs": 1, "pretrain.iters_per_epoch": 1,
                                     "data.height": 128, "data.width": 64})  # last stride 2: BF16_SIZE doubled
    pretrain(config, tmp_path / "bf16", data_root=data_root, progress=False)
    assert seen and set(seen) == {torch.bfloat16}
    state = torch.load(tmp_path / "bf16" / "backbone.pth", weights_only=True)
    assert all(t.dtype in (torch.float32, torch.int64) for t in state.values())
    assert all(v == v for v in metrics_rows(tmp_path / "bf16")[0].values() if isinstance(v, float))  # no NaN
    # upreid: reads the same file as moco: does
    assert load_init(ReidModel("resnet18"), f"upreid:{tmp_path / 'bf16' / 'backbone.pth'}").matched_fraction == 1.0
