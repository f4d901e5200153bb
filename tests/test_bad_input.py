"""Bad input, tried as a hostile new user would: each case ends in one ``Error:`` line that names the
culprit (file, key or option), exit code non-zero, no traceback, and (where it is the config) before
any training starts."""

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_reid_data import write_two_domains

from uda_reid.cli import cli

TINY = [
    "device=cpu", "data.height=32", "data.width=16", "data.batch_size=16", "data.workers=0", "data.pad=2",
    "model.arch=resnet18", "optim.warmup_epochs=0", "clustering.k1=6", "clustering.k2=2",
    "clustering.min_samples=2", "adapt.iters_per_epoch=2", "adapt.eval_every=1", "adapt.bn_groups=1",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("data"))


def run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def tiny(*extra: str) -> list[str]:
    return [arg for item in [*TINY, *extra] for arg in ("--set", item)]


def assert_one_line_error(result, *culprits: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for culprit in culprits:
        assert culprit in errors[0], errors[0]


@pytest.mark.parametrize(("setting", "culprit"), [
    ("optim.lr=-1", "--set optim.lr=-1: optim.lr must be > 0"),
    ("data.height=0", "--set data.height=0: data.height must be >= 1"),
    ("clustering.eps=-1", "--set clustering.eps=-1: clustering.eps must be in (0, 1)"),
    ("clustering.eps=2", "--set clustering.eps=2: clustering.eps must be in (0, 1)"),
    ("clustering.clusterer=optics", "--set clustering.clusterer=optics: clustering.clusterer must be one of dbscan, "),
    ("clustering.knn=fast", "--set clustering.knn=fast: clustering.knn must be one of auto, "),
    ("camera_proxies.mode=both", "camera_proxies.mode must be one of off, cap, pplr"),
])
@pytest.mark.parametrize("method", ["spcl", "baseline"])
def test_a_bad_setting_is_one_line_naming_the_key_before_any_work(tmp_path, setting, culprit, method):
    # no data root: a check that came after loading data would fail on the missing dataset instead
    result = run("usl", "--dataset", "dukemtmc", "--method", method, "--out", tmp_path / "run",
                 "--data-root", tmp_path / "nothing", *tiny(setting))
    assert_one_line_error(result, culprit)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_negative_epochs_are_refused_by_the_option(tmp_path):
    assert_one_line_error(run("adapt", "--source", "market", "--target", "duke", "--epochs", "-3", "--out", tmp_path / "r"),
                          "--epochs", "-3")


def test_a_text_file_as_init_names_the_file(tmp_path, data_root):
    text = tmp_path / "weights.pth"
    text.write_text("these are not weights\n")
    result = run("usl", "--dataset", "dukemtmc", "--init", text, "--data-root", data_root, "--out", tmp_path / "r",
                 "--epochs", "1", "--quiet", *tiny())
    assert_one_line_error(result, str(text), "not a readable PyTorch checkpoint")


def test_out_under_a_file_names_the_path(tmp_path, data_root):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run("usl", "--dataset", "dukemtmc", "--data-root", data_root, "--out", blocker / "run", "--epochs", "1",
                 "--quiet", *tiny())
    assert_one_line_error(result, str(blocker / "run"), "a file is in the way")


def test_synth_into_an_unusable_data_root_names_the_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_one_line_error(run("synth", "--domain", "synthx", "--data-root", blocker / "data", "--quiet"), str(blocker))


def test_an_empty_image_read_by_a_dataloader_worker_is_the_original_one_line(tmp_path):
    data_root = write_two_domains(tmp_path / "data")
    broken = next((data_root / "DukeMTMC-reID" / "bounding_box_train").glob("*.jpg"))
    broken.write_bytes(b"")
    result = run("usl", "--dataset", "dukemtmc", "--data-root", data_root, "--out", tmp_path / "r", "--epochs", "1",
                 "--quiet", *tiny("data.workers=1"))
    assert_one_line_error(result, f"cannot read image {broken}")
    assert "DataLoader worker" not in result.output


def _huge(path, monkeypatch, pixels: int) -> None:
    """``path`` becomes an image PIL refuses as a decompression bomb (the limit lowered to a few thousand
    pixels, so the test writes a 200×100 image instead of 16000×12000)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    side = int(pixels ** 0.5)
    Image.new("RGB", (2 * side, side // 2), "gray").save(path)


@pytest.mark.parametrize("pixels", [20_000, 6_000], ids=["bomb-error", "bomb-warning"])
def test_an_image_past_the_decompression_bomb_limit_is_one_line_naming_the_file(tmp_path, monkeypatch, pixels):
    from uda_reid.data.image_dataset import read_image
    from uda_reid.errors import ImageReadError

    huge = tmp_path / "IMG_huge.jpg"
    _huge(huge, monkeypatch, pixels)
    with pytest.raises(ImageReadError, match=f"cannot read image {huge}: .*skip_unreadable"):
        read_image(str(huge))


@pytest.mark.parametrize("fault", ["empty", "decompression-bomb"])
def test_skip_unreadable_skips_a_bad_image_in_any_split_and_counts_it(tmp_path, monkeypatch, fault):
    data_root = write_two_domains(tmp_path / "data")
    broken = next((data_root / "DukeMTMC-reID" / "query").glob("*.jpg"))
    if fault == "empty":
        broken.write_bytes(b"")
    else:
        _huge(broken, monkeypatch, 20_000)
    result = CliRunner().invoke(cli, ["usl", "--dataset", "dukemtmc", "--data-root", str(data_root), "--out",
                                      str(tmp_path / "r"), "--epochs", "1", "--quiet",
                                      *tiny("data.skip_unreadable=true")])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable query image(s) of dukemtmc" in (tmp_path / "r" / "log.txt").read_text()


def test_the_screen_names_the_stages_and_keeps_one_line_per_epoch(tmp_path, data_root):
    result = CliRunner().invoke(cli, ["adapt", "--source", "market", "--target", "duke", "--data-root", str(data_root),
                                      "--out", str(tmp_path / "r"), "--epochs", "2", "--quiet",
                                      *tiny("adapt.source_pretrain_epochs=2", "train.iters_per_epoch=2", "train.eval_every=1")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("source stage: supervised training on market1501, 2 epochs") for line in lines)
    assert [line.split("  ")[0] for line in lines if line.startswith("source stage epoch")] == [
        "source stage epoch 1/2", "source stage epoch 2/2"]
    assert any(line.startswith("adaptation: initial model  mAP") for line in lines)
    epochs = [line for line in lines if line.startswith("adaptation epoch")]
    assert len(epochs) == 2 and all("clusters" in line and "loss" in line and "mAP" in line for line in epochs)


def test_help_answers_without_importing_torch():
    import subprocess
    import sys

    code = "import sys, uda_reid.cli; assert 'torch' not in sys.modules, 'the CLI imports torch at start-up'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_every_option_has_help_and_the_registry_options_offer_what_is_registered():
    import click

    from uda_reid.addons import ADD_ONS
    from uda_reid.clustering import CLUSTERERS
    from uda_reid.cli.registered import pretraining_methods
    from uda_reid.methods import METHODS
    from uda_reid.models.backbones import BACKBONES

    ctx = click.Context(cli)
    missing = []
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        commands = [(f"{name} {sub}", command.get_command(ctx, sub)) for sub in command.list_commands(ctx)] \
            if isinstance(command, click.Group) else [(name, command)]
        for label, sub in commands:
            missing += [f"{label} {p.opts[0]}" for p in sub.params if isinstance(p, click.Option) and not p.help]
    assert not missing, f"options without help: {missing}"
    for command in ("adapt", "usl"):
        options = {p.name: p for p in cli.get_command(ctx, command).params}
        clustering = [name for name in METHODS.names() if METHODS.get(name).clusters]
        assert list(options["method"].type.choices) == clustering
        assert all(f"{name}: " in options["method"].help for name in clustering)
        assert list(options["clusterer"].type.choices) == CLUSTERERS.names()
        assert all(name in options["arch"].help for name in BACKBONES.names())
        flags = [flag for add_on in ADD_ONS.names() for flag in ADD_ONS.get(add_on).flags]
        assert flags and all(any(flag.name in p.opts for p in options.values()) for flag in flags)
    pretrain_method = next(p for p in cli.get_command(ctx, "pretrain").params if p.name == "method")
    assert list(pretrain_method.type.choices) == pretraining_methods().names()
