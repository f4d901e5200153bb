"""Imported LUPerson ViT (TransReID-SSL) and IBN-Net ResNet-50-IBN-a weights give, through ``udareid
extract``, the features the authors' evaluation computes from the same files.

The files are generated here in the released layouts (key names and shapes written out below, not taken
from uda_reid's models): TransReID-SSL's flat ``vit_small_ics_cfs_lup.pth``, a raw DINO training
checkpoint (``student``/``teacher`` with ``module.backbone.`` / ``module.head.`` prefixes, ``args``), IBN-Net's
flat ``resnet50_ibn_a-d9d0bb7b.pth`` and SpCL's older ``{'state_dict': {'module.…'}}`` copy of it. The
reference features are computed by plain functional code from the state dict, as the authors' models
compute them in evaluation:

- TransReID-SSL's cluster-contrast model: class token after the final LayerNorm, through a BatchNorm1d
  neck, L2-normalised; an untrained neck (running mean 0, variance 1) only scales it, so the feature is
  the normalised class token. Input: bicubic resize to 256×128, mean = std = 0.5.
- SpCL / cluster-contrast ``resnet_ibn50a``: last stride 1, average (SpCL) or GeM p = 3 (cluster-contrast)
  pooling, BN neck, L2-normalised; ImageNet statistics.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from uda_reid.cli import cli

IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIN_COSINE = 0.9999


# --------------------------------------------------------------------------- files in the released layouts
def _bn(state: dict, prefix: str, channels: int, generator: torch.Generator) -> None:
    state[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(channels, generator=generator)
    state[f"{prefix}.bias"] = 0.1 * torch.randn(channels, generator=generator)
    state[f"{prefix}.running_mean"] = 0.1 * torch.randn(channels, generator=generator)
    state[f"{prefix}.running_var"] = 0.5 + torch.rand(channels, generator=generator)
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def _ibn(state: dict, prefix: str, channels: int, generator: torch.Generator) -> None:
    half = channels // 2
    state[f"{prefix}.IN.weight"] = 1 + 0.1 * torch.randn(half, generator=generator)
    state[f"{prefix}.IN.bias"] = 0.1 * torch.randn(half, generator=generator)
    _bn(state, f"{prefix}.BN", channels - half, generator)


def _conv(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)


def transreid_ssl_vit_small_ics(seed: int, grid: tuple[int, int] = (16, 8), pos_scale: float = 0.02) -> dict[str, torch.Tensor]:
    """``vit_small_ics_cfs_lup.pth``: 172 entries, no prefix (TransReID-SSL's convert script keeps the
    DINO teacher's backbone)."""
    g = torch.Generator().manual_seed(seed)
    dim, depth = 384, 12
    state: dict[str, torch.Tensor] = {"cls_token": 0.02 * torch.randn(1, 1, dim, generator=g),
                                      "pos_embed": pos_scale * torch.randn(1, 1 + grid[0] * grid[1], dim, generator=g)}
    state["patch_embed.conv.0.weight"] = _conv((64, 3, 7, 7), g)
    _ibn(state, "patch_embed.conv.1", 64, g)
    state["patch_embed.conv.3.weight"] = _conv((64, 64, 3, 3), g)
    _ibn(state, "patch_embed.conv.4", 64, g)
    state["patch_embed.conv.6.weight"] = _conv((64, 64, 3, 3), g)
    _bn(state, "patch_embed.conv.7", 64, g)
    state["patch_embed.proj.weight"] = _conv((dim, 64, 8, 8), g)
    state["patch_embed.proj.bias"] = 0.02 * torch.randn(dim, generator=g)
    for i in range(depth):
        block = f"blocks.{i}"
        for norm in ("norm1", "norm2"):
            state[f"{block}.{norm}.weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
            state[f"{block}.{norm}.bias"] = 0.1 * torch.randn(dim, generator=g)
        for name, (out, inp) in {"attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim),
                                 "mlp.fc1": (4 * dim, dim), "mlp.fc2": (dim, 4 * dim)}.items():
            state[f"{block}.{name}.weight"] = torch.randn(out, inp, generator=g) / math.sqrt(inp)
            state[f"{block}.{name}.bias"] = 0.02 * torch.randn(out, generator=g)
    state["norm.weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
    state["norm.bias"] = 0.1 * torch.randn(dim, generator=g)
    assert len(state) == 172
    return state


def raw_dino_checkpoint(teacher: dict, student: dict) -> dict:
    """DINO's ``checkpoint.pth`` of an ICS model: both networks DDP-wrapped, heads beside the backbones."""
    head = {"head.mlp.0.weight": torch.randn(32, 384), "head.last_layer.weight_v": torch.randn(64, 16)}

    def wrapped(backbone: dict) -> dict:
        return {**{f"module.backbone.{k}": v for k, v in backbone.items()}, **{f"module.{k}": v for k, v in head.items()}}

    return {"student": wrapped(student), "teacher": wrapped(teacher), "epoch": 100,
            "optimizer": {"state": {}, "param_groups": []}, "dino_loss": {"center": torch.zeros(1, 64)},
            "args": argparse.Namespace(arch="ours_vit_small", out_dim=65536)}


RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))


def ibn_net_resnet50_ibn_a(seed: int) -> dict[str, torch.Tensor]:
    """``resnet50_ibn_a-d9d0bb7b.pth``: flat, torchvision-style names, ``bn1`` of the blocks of
    layer1–3 split into ``IN`` / ``BN``, ImageNet classifier ``fc``."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {"conv1.weight": _conv((64, 3, 7, 7), g)}
    _bn(state, "bn1", 64, g)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(RESNET50_STAGES, start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            state[f"{p}.conv1.weight"] = _conv((planes, inplanes if b == 0 else planes * 4, 1, 1), g)
            (_ibn if stage < 4 else _bn)(state, f"{p}.bn1", planes, g)
            state[f"{p}.conv2.weight"] = _conv((planes, planes, 3, 3), g)
            _bn(state, f"{p}.bn2", planes, g)
            state[f"{p}.conv3.weight"] = _conv((planes * 4, planes, 1, 1), g) * 0.2
            _bn(state, f"{p}.bn3", planes * 4, g)
            if b == 0:
                state[f"{p}.downsample.0.weight"] = _conv((planes * 4, inplanes, 1, 1), g)
                _bn(state, f"{p}.downsample.1", planes * 4, g)
        inplanes = planes * 4
    state["fc.weight"] = 0.01 * torch.randn(1000, 2048, generator=g)
    state["fc.bias"] = torch.zeros(1000)
    return state


# --------------------------------------------------------------------------- the authors' evaluation, functionally
def _batch_norm(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-5)


def _instance_batch_norm(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    half = state[f"{prefix}.IN.weight"].shape[0]
    first = F.instance_norm(x[:, :half], weight=state[f"{prefix}.IN.weight"], bias=state[f"{prefix}.IN.bias"], eps=1e-5)
    return torch.cat([first, _batch_norm(x[:, half:], state, f"{prefix}.BN")], dim=1)


def _layer_norm(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-6)


def reference_vit_feature(state: dict, images: torch.Tensor, heads: int = 6) -> torch.Tensor:
    x = F.relu(_instance_batch_norm(F.conv2d(images, state["patch_embed.conv.0.weight"], stride=2, padding=3), state,
                                    "patch_embed.conv.1"))
    x = F.relu(_instance_batch_norm(F.conv2d(x, state["patch_embed.conv.3.weight"], padding=1), state, "patch_embed.conv.4"))
    x = F.relu(_batch_norm(F.conv2d(x, state["patch_embed.conv.6.weight"], padding=1), state, "patch_embed.conv.7"))
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=8)
    n, dim, grid_h, grid_w = x.shape
    tokens = torch.cat([state["cls_token"].expand(n, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos = state["pos_embed"]
    if pos.shape[1] != tokens.shape[1]:  # TransReID-SSL's resize_pos_embed: hw_ratio 2, bilinear
        old_h = int(math.sqrt((pos.shape[1] - 1) * 2))
        grid = pos[:, 1:].reshape(1, old_h, old_h // 2, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear")
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)], dim=1)
    tokens = tokens + pos
    head_dim = dim // heads
    for i in range(12):
        b = f"blocks.{i}"
        qkv = F.linear(_layer_norm(tokens, state, f"{b}.norm1"), state[f"{b}.attn.qkv.weight"], state[f"{b}.attn.qkv.bias"])
        q, k, v = qkv.reshape(n, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * head_dim ** -0.5).softmax(dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(n, -1, dim)
        tokens = tokens + F.linear(mixed, state[f"{b}.attn.proj.weight"], state[f"{b}.attn.proj.bias"])
        hidden = F.gelu(F.linear(_layer_norm(tokens, state, f"{b}.norm2"), state[f"{b}.mlp.fc1.weight"],
                                 state[f"{b}.mlp.fc1.bias"]))
        tokens = tokens + F.linear(hidden, state[f"{b}.mlp.fc2.weight"], state[f"{b}.mlp.fc2.bias"])
    cls = _layer_norm(tokens, state, "norm")[:, 0]
    neck = cls / math.sqrt(1 + 1e-5)  # an untrained BatchNorm1d neck in eval mode
    return F.normalize(neck, dim=1)


def reference_resnet50_ibn_a_feature(state: dict, images: torch.Tensor, pooling: str) -> torch.Tensor:
    x = F.max_pool2d(F.relu(_batch_norm(F.conv2d(images, state["conv1.weight"], stride=2, padding=3), state, "bn1")),
                     kernel_size=3, stride=2, padding=1)
    for stage, (_, blocks) in enumerate(RESNET50_STAGES, start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            stride = 2 if b == 0 and stage in (2, 3) else 1  # last stride 1: layer4 keeps its resolution
            norm1 = _instance_batch_norm if stage < 4 else _batch_norm
            out = F.relu(norm1(F.conv2d(x, state[f"{p}.conv1.weight"]), state, f"{p}.bn1"))
            out = F.relu(_batch_norm(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1), state, f"{p}.bn2"))
            out = _batch_norm(F.conv2d(out, state[f"{p}.conv3.weight"]), state, f"{p}.bn3")
            shortcut = x if b else _batch_norm(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), state,
                                               f"{p}.downsample.1")
            x = F.relu(out + shortcut)
    if pooling == "gem":
        pooled = x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    else:
        pooled = x.mean(dim=(2, 3))
    return F.normalize(pooled / math.sqrt(1 + 1e-5), dim=1)


# --------------------------------------------------------------------------- images and the user's command
SIZES = [(300, 110), (170, 90), (256, 128)]  # H×W as they come from a detector; resized to the run's size


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i + 1:04d}_c1s1_{i:06d}_00.png")
    return folder


def prepared(folder, size: tuple[int, int], mean, std) -> torch.Tensor:
    """The authors' test transform: PIL bicubic resize, to [0, 1], normalise."""
    images = []
    for path in sorted(folder.iterdir()):
        image = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        images.append((tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    return torch.stack(images)


def extracted(weights: str, arch: str, crops, out, *sets: str) -> np.ndarray:
    args = ["extract", "--weights", weights, "--arch", arch, "--images", str(crops), "--out", str(out), "--quiet",
            "--device", "cpu"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in out.with_name(out.name + ".index.tsv").read_text().splitlines()[1:]]
    order = np.argsort([row[1] for row in rows])  # the reference reads the folder sorted by name
    return np.load(out)[order], result.output


def assert_same_directions(features: np.ndarray, reference: torch.Tensor) -> None:
    cosine = (torch.from_numpy(np.asarray(features)).double() * reference.double()).sum(dim=1)
    assert features.shape == tuple(reference.shape)
    assert bool((cosine >= MIN_COSINE).all()), cosine


# --------------------------------------------------------------------------- the tests
def test_transreid_ssl_vit_small_ics_file_gives_the_authors_features(crops, tmp_path):
    state = transreid_ssl_vit_small_ics(seed=1)
    torch.save(state, tmp_path / "vit_small_ics_cfs_lup.pth")
    features, output = extracted(f"lup:{tmp_path / 'vit_small_ics_cfs_lup.pth'}", "vit_small_ics", crops,
                                 tmp_path / "f.npy")
    assert "lup_vit" in output  # the weights' normalisation, said
    with torch.no_grad():
        reference = reference_vit_feature(state, prepared(crops, (256, 128), (0.5,) * 3, (0.5,) * 3))
    assert_same_directions(features, reference)


def test_a_taller_input_resizes_the_position_embeddings_as_the_authors_loader(crops, tmp_path):
    state = transreid_ssl_vit_small_ics(seed=2, pos_scale=1.0)  # large enough for the interpolation to matter
    torch.save(state, tmp_path / "vit.pth")
    features, _ = extracted(f"lup:{tmp_path / 'vit.pth'}", "vit_small_ics", crops, tmp_path / "f.npy",
                            "data.height=384", "data.width=128")
    with torch.no_grad():
        reference = reference_vit_feature(state, prepared(crops, (384, 128), (0.5,) * 3, (0.5,) * 3))
    assert_same_directions(features, reference)


def test_a_raw_dino_checkpoint_is_read_as_its_teacher_backbone(crops, tmp_path):
    teacher, student = transreid_ssl_vit_small_ics(seed=3), transreid_ssl_vit_small_ics(seed=4)
    torch.save(raw_dino_checkpoint(teacher, student), tmp_path / "checkpoint.pth")
    features, _ = extracted(f"lup:{tmp_path / 'checkpoint.pth'}", "vit_small_ics", crops, tmp_path / "f.npy")
    with torch.no_grad():
        reference = reference_vit_feature(teacher, prepared(crops, (256, 128), (0.5,) * 3, (0.5,) * 3))
    assert_same_directions(features, reference)


@pytest.mark.parametrize("pooling", ["avg", "gem"])
def test_ibn_net_resnet50_ibn_a_file_gives_spcl_and_cluster_contrast_features(crops, tmp_path, pooling):
    state = ibn_net_resnet50_ibn_a(seed=5)
    torch.save(state, tmp_path / "resnet50_ibn_a-d9d0bb7b.pth")
    features, output = extracted(f"imagenet:{tmp_path / 'resnet50_ibn_a-d9d0bb7b.pth'}", "resnet50_ibn_a", crops,
                                 tmp_path / "f.npy", f"model.pooling={pooling}")
    assert "imagenet" in output
    with torch.no_grad():
        reference = reference_resnet50_ibn_a_feature(state, prepared(crops, (256, 128), IMAGE_MEAN, IMAGE_STD), pooling)
    assert_same_directions(features, reference)


def test_spcls_older_copy_of_the_ibn_weights_reads_the_same(crops, tmp_path):
    state = ibn_net_resnet50_ibn_a(seed=6)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 0},
               tmp_path / "resnet50_ibn_a.pth.tar")
    features, _ = extracted(f"imagenet:{tmp_path / 'resnet50_ibn_a.pth.tar'}", "resnet50_ibn_a", crops,
                            tmp_path / "f.npy")
    with torch.no_grad():
        reference = reference_resnet50_ibn_a_feature(state, prepared(crops, (256, 128), IMAGE_MEAN, IMAGE_STD), "avg")
    assert_same_directions(features, reference)
