"""Initialise a :class:`ReidModel` from a checkpoint file a user brings.

Accepted (docs/checkpoints.md): torchvision ImageNet ResNet state dicts, LUPerson releases (plain ResNet state
dicts) and raw LUPerson MoCo training checkpoints, UP-ReID-like files with ``base_encoder.`` /
``backbone.`` prefixes and projection heads, DataParallel (``module.``) files, ``.safetensors``, and
uda_reid's own run checkpoints. Foreign files are remapped onto the backbone's torchvision names; our
own checkpoints load everything except the classifier (its class count changes with every clustering).

Files are read with ``weights_only=True``: a file that needs arbitrary Python objects to unpickle is
refused, never executed. A file whose tensors mostly do not fit the backbone (another depth, another
family) is refused too, instead of silently training from a half-random network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..fileio import safe_torch_load
from .reid_model import ReidModel

INIT_OPTION = "--init"
INIT_KINDS: dict[str, str] = {
    "imagenet": "ImageNet weights: torchvision's ResNet state dict, IBN-Net's resnet50_ibn_a-d9d0bb7b.pth",
    "lup": "LUPerson weights: a ResNet (plain state dict or raw MoCo checkpoint; turns on extra_bn) or "
           "TransReID-SSL's ViT (vit_*_ics_cfs_lup.pth, or a raw DINO checkpoint: its teacher)",
    "upreid": "UP-ReID-like self-supervised ResNet checkpoint; turns on extra_bn",
    "moco": "a MoCo-style self-supervised backbone (udareid pretrain's backbone.pth, a raw MoCo checkpoint); "
            "turns on extra_bn",
}
FILE_KIND = "file"  # a bare PATH: a uda_reid run checkpoint or a plain state dict
EXTRA_BN_KINDS = frozenset({"lup", "upreid", "moco"})

RUN_CHECKPOINT_FORMAT = "uda_reid"
RUN_CHECKPOINT_VERSION = 1
PRETRAIN_STAGE = "pretrain"  # a run checkpoint whose ``model`` is a pre-trained backbone (torchvision names)

MIN_MATCHED_FRACTION = 0.9
# "teacher": a raw DINO training checkpoint (its student and heads are not the model to start from).
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "teacher")
STRIPPED_PREFIXES = ("module.", "encoder_q.", "encoder.", "backbone.", "base.", "base_encoder.", "model.")
HEAD_NAMES = frozenset({"fc", "head", "heads", "projector", "predictor", "classifier"})
MOMENTUM_ENCODER_NAMES = frozenset({"encoder_k", "momentum_encoder"})
OWN_MODEL_PARTS = frozenset({"backbone", "extra_bn", "pooling", "embedding", "neck", "classifier"})
_EXAMPLES = 5


@dataclass
class ImportReport:
    """What :func:`load_init` did with a checkpoint; ``str()`` gives a short summary for the log.

    Key names in ``loaded``/``missing``/``unexpected`` are the model's names (after prefix stripping);
    ``dropped_heads`` and ``skipped`` keep the file's names. ``missing`` lists every model tensor left
    at its initial value; a shape mismatch appears there and in ``unexpected`` with both shapes.
    """

    source: Path
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_heads: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # MoCo key encoder and queue
    stripped_prefixes: list[str] = field(default_factory=list)
    matched_fraction: float = 0.0
    arch: str = ""  # the model's --arch

    def __str__(self) -> str:
        expected = len(self.loaded) + len(self.missing)
        lines = [
            f"init from {self.source} [{self.format}]: loaded {len(self.loaded)}/{expected} tensors "
            f"({self.matched_fraction:.1%}) into {self.arch}"
        ]
        if self.stripped_prefixes:
            lines.append(f"  stripped prefixes: {', '.join(self.stripped_prefixes)}")
        if self.dropped_heads:
            lines.append(f"  dropped heads: {_examples(self.dropped_heads)}")
        if self.skipped:
            lines.append(f"  skipped MoCo key encoder / queue: {len(self.skipped)} tensors")
        if self.missing:
            lines.append(f"  missing (left at their initial values): {_examples(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {_examples(self.unexpected)}")
        return "\n".join(lines)


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:_EXAMPLES])
    return shown if len(names) <= _EXAMPLES else f"{shown} (+{len(names) - _EXAMPLES} more)"


def parse_init_spec(spec: str) -> tuple[str, Path | None]:
    """Split ``"imagenet:PATH"``, ``"lup:PATH"``, ``"upreid:PATH"`` or a bare ``"PATH"`` into (kind, path).

    ``"imagenet"`` alone is torchvision's ImageNet weights of the model's arch (path None: resolved
    when the model is known, by :func:`imagenet_weights_file`).
    A bare path has kind ``"file"`` (a uda_reid run checkpoint or a plain state dict). A one-letter
    prefix is a Windows drive, not a kind; an unknown kind is an error unless the whole spec is an
    existing file.
    """
    text = spec.strip()
    if not text:
        raise ConfigError(f"{INIT_OPTION} is empty; expected KIND:PATH or PATH ({_kinds_help()})")
    if text.lower() == "imagenet" and not Path(text).exists():
        return "imagenet", None  # torchvision's weights for the model's arch: see imagenet_weights_file
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", text, flags=re.DOTALL)
    if match is not None:
        kind, rest = match.group(1).lower(), match.group(2).strip()
        if kind in INIT_KINDS:
            if not rest:
                raise ConfigError(f"{INIT_OPTION} {spec!r} has no path after '{kind}:'")
            return kind, Path(rest).expanduser()
        if not Path(text).expanduser().is_file():
            raise ConfigError(f"unknown {INIT_OPTION} kind {kind!r} in {spec!r}; {_kinds_help()}")
    return FILE_KIND, Path(text).expanduser()


def imagenet_weights_file(arch: str) -> Path:
    """torchvision's ImageNet weights of ``arch`` (``IMAGENET1K_V1``, the file SpCL, cluster-contrast and
    PPLR start from), in torch's cache; downloaded there once, hash-checked, when missing.

    Offline, the error names the file and where to put it (or pass ``imagenet:PATH``).
    """
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    except (ValueError, AttributeError, KeyError):
        raise ConfigError(f"{INIT_OPTION} imagenet: torchvision has no ImageNet weights for {arch!r}; "
                          f"pass {INIT_OPTION} imagenet:PATH") from None
    name = Path(urlparse(weights.url).path).name
    target = Path(torch.hub.get_dir()) / "checkpoints" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(name)
    try:
        torch.hub.download_url_to_file(weights.url, str(target), hash_prefix=match.group(1) if match else None)
    except (URLError, OSError, RuntimeError) as error:
        raise CheckpointError(
            f"{INIT_OPTION} imagenet: {target} is not there and could not be downloaded from {weights.url} "
            f"({error}). Offline: download {name} on a connected machine and put it at {target}, or pass "
            f"{INIT_OPTION} imagenet:PATH"
        ) from None
    return target


def _kinds_help() -> str:
    kinds = "; ".join(f"{kind}:PATH = {what}" for kind, what in INIT_KINDS.items())
    return (f"known kinds: {kinds}; imagenet alone = torchvision's weights for the arch (downloaded once into "
            f"torch's cache); or a bare PATH = a uda_reid run checkpoint or a plain state dict")


def lup_uses_extra_bn(spec: str) -> bool:
    """Whether an init spec calls for LUPerson's extra BN on the backbone output (``lup:``/``upreid:``)."""
    kind, _ = parse_init_spec(spec)
    return kind in EXTRA_BN_KINDS


def _unwrap_state_dict(content: Any, path: Path) -> dict[str, torch.Tensor]:
    """The ``name -> tensor`` mapping inside ``{'state_dict': ...}`` / ``{'model': ...}`` wrappers."""
    state = content
    for _ in range(len(WRAPPER_KEYS)):  # wrappers may nest, e.g. {'model': {'state_dict': ...}}
        if not isinstance(state, Mapping):
            break
        inner = next((state[key] for key in WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, expected a state dict (a dict of name -> tensor, "
            f"possibly wrapped as {{'state_dict': ...}} or {{'model': ...}})"
        )
    tensors = {str(name): value for name, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(state)[:_EXAMPLES])) or "(empty)"
        raise CheckpointError(f"{path} contains no tensors (top-level keys: {keys}); expected a state dict")
    return tensors


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict (``name -> tensor``, on CPU) from a ``.pth``/``.pt``/``.tar`` or ``.safetensors`` file.

    Unwraps ``state_dict`` / ``model`` / ``state_dict_ema`` wrappers and drops non-tensor entries.
    Raises :class:`CheckpointError` for a missing or unreadable file, pickled Python objects, content
    that is not a dict, or a dict without tensors.
    """
    path = Path(path)
    return _unwrap_state_dict(safe_torch_load(path), path)


def _drop_counters(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # BatchNorm step counters carry no weights; files made before they existed lack them.
    return {name: tensor for name, tensor in state.items() if not name.endswith("num_batches_tracked")}


def _is_momentum_or_queue(name: str) -> bool:
    parts = name.split(".")
    return any(part in MOMENTUM_ENCODER_NAMES for part in parts) or parts[-1].startswith("queue")


def _strip_prefixes(name: str) -> tuple[str, list[str]]:
    stripped = []
    while True:
        prefix = next((prefix for prefix in STRIPPED_PREFIXES if name.startswith(prefix)), None)
        if prefix is None:
            return name, stripped
        name = name[len(prefix):]
        stripped.append(prefix)


def _describe_shape(tensor: torch.Tensor) -> str:
    return "×".join(map(str, tensor.shape)) or "scalar"


@dataclass
class _Remapped:
    tensors: dict[str, torch.Tensor]
    dropped_heads: list[str]
    skipped: list[str]
    stripped_prefixes: list[str]
    duplicates: list[str]
    is_moco: bool


def _remap_foreign(state: Mapping[str, torch.Tensor]) -> _Remapped:
    """Keep the query encoder, strip wrapper prefixes and drop heads, giving torchvision ResNet names."""
    is_moco = any(name.startswith("encoder_q.") or ".encoder_q." in name for name in state)
    remapped = _Remapped({}, [], [], [], [], is_moco)
    for name, tensor in state.items():
        in_query_encoder = name.startswith("encoder_q.") or ".encoder_q." in name
        if (is_moco and not in_query_encoder) or _is_momentum_or_queue(name):
            remapped.skipped.append(name)
            continue
        new_name, prefixes = _strip_prefixes(name)
        for prefix in prefixes:
            if prefix not in remapped.stripped_prefixes:
                remapped.stripped_prefixes.append(prefix)
        if new_name.split(".", 1)[0] in HEAD_NAMES:
            remapped.dropped_heads.append(name)
        elif new_name in remapped.tensors:
            remapped.duplicates.append(f"{name} (duplicate of another key after prefix stripping)")
        else:
            remapped.tensors[new_name] = tensor
    return remapped


def _match(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """(loaded, missing, unexpected) of ``source`` against ``target``.

    A shape mismatch is unexpected (with both shapes) and its model tensor is missing (not loaded).
    """
    loaded, unexpected = [], []
    for name, tensor in source.items():
        if name not in target:
            unexpected.append(name)
        elif tensor.shape != target[name].shape:
            unexpected.append(
                f"{name} (file {_describe_shape(tensor)} vs model {_describe_shape(target[name])})"
            )
        else:
            loaded.append(name)
    loaded_names = set(loaded)
    missing = [name for name in target if name not in loaded_names]
    return loaded, missing, unexpected


def _fit_position_embeddings(source: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], backbone: nn.Module,
                             prefix: str) -> dict[str, torch.Tensor]:
    """A transformer's position embeddings trained on another patch grid, resized to the model's (bilinear,
    the class token's kept: ``uda_reid/models/vit.py``); everything else as it is."""
    name = f"{prefix}pos_embed"
    resize = getattr(backbone, "resize_position_embedding", None)
    if resize is None or name not in source or name not in target or source[name].shape == target[name].shape:
        return source
    if source[name].dim() != 3 or source[name].shape[2] != target[name].shape[2]:
        return source  # another width: reported as unexpected by _match
    return {**source, name: resize(source[name])}


def _file_arch_hint(content: Any) -> str:
    """`` (the file says arch 'resnet18')`` when the checkpoint records its architecture."""
    if not isinstance(content, Mapping):
        return ""
    candidates: list[Any] = [content.get("arch")]
    config = content.get("config")
    if isinstance(config, Mapping):
        candidates.append(config.get("arch"))
        model_config = config.get("model")
        if isinstance(model_config, Mapping):
            candidates.append(model_config.get("arch"))
    arch = next((value for value in candidates if isinstance(value, str)), None)
    return f" (the file says arch {arch!r})" if arch else ""


def _foreign_format(kind: str, remapped: _Remapped, content: Any) -> str:
    source = {"lup": "LUPerson ", "upreid": "UP-ReID "}.get(kind, "")
    if isinstance(content, Mapping) and isinstance(content.get("teacher"), Mapping):
        return f"{source}DINO (raw: teacher)"
    if "cls_token" in remapped.tensors:
        return f"{source}ViT" + (" (TransReID-SSL)" if "patch_embed.conv.0.weight" in remapped.tensors else "")
    if remapped.is_moco:
        return f"{source}MoCo (raw)"
    if not remapped.stripped_prefixes:
        if remapped.dropped_heads and set(remapped.dropped_heads) <= {"fc.weight", "fc.bias"}:
            return "torchvision ImageNet"
        if not remapped.dropped_heads:
            return "LUPerson (plain)" if kind == "lup" else "plain ResNet state dict"
    return f"{source}generic" if source else "generic"


def _looks_like_reid_model_state(state: Mapping[str, torch.Tensor]) -> bool:
    """A bare ``ReidModel.state_dict()`` (``backbone.*`` plus neck / extra BN / classifier keys)."""
    top_level = {name.split(".", 1)[0] for name in state}
    return "backbone" in top_level and len(top_level) > 1 and top_level <= OWN_MODEL_PARTS


def load_init(model: ReidModel, spec: str) -> ImportReport:
    """Load initial weights into ``model`` in place and say what was loaded.

    Foreign checkpoints (ImageNet, LUPerson, UP-ReID, plain) fill the backbone; uda_reid run
    checkpoints fill every part except the classifier. Raises :class:`CheckpointError` when fewer than
    90 % of the target tensors match (e.g. a ResNet-18 file into a ResNet-50), naming the file, the
    architecture, the fraction and example keys.
    """
    kind, path = parse_init_spec(spec)
    if path is None:
        path = imagenet_weights_file(model.arch)
    content = safe_torch_load(path)
    is_run_checkpoint = isinstance(content, Mapping) and content.get("format") == RUN_CHECKPOINT_FORMAT
    if is_run_checkpoint:
        version = content.get("version")
        if not isinstance(version, int) or version > RUN_CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path} is a uda_reid run checkpoint of version {version!r}; this uda_reid reads "
                f"version {RUN_CHECKPOINT_VERSION} or older (upgrade uda_reid)"
            )
    state = _drop_counters(_unwrap_state_dict(content, path))
    if is_run_checkpoint and content.get("stage") == PRETRAIN_STAGE:  # udareid pretrain's last.pt: a bare backbone
        is_run_checkpoint = False

    if is_run_checkpoint or _looks_like_reid_model_state(state):
        target_module: nn.Module = model
        target = {n: t for n, t in _drop_counters(model.state_dict()).items() if not n.startswith("classifier.")}
        dropped_heads = [name for name in state if name.startswith("classifier.")]
        source = {name: tensor for name, tensor in state.items() if not name.startswith("classifier.")}
        own_format = "uda_reid run checkpoint" if is_run_checkpoint else "uda_reid model state dict"
        report = ImportReport(path, own_format, dropped_heads=dropped_heads, arch=model.arch)
        duplicates: list[str] = []
        part = "model (without classifier)"
    else:
        remapped = _remap_foreign(state)
        target_module = model.backbone
        target = _drop_counters(model.backbone.state_dict())
        source = remapped.tensors
        report = ImportReport(
            path,
            _foreign_format(kind, remapped, content),
            dropped_heads=remapped.dropped_heads,
            skipped=remapped.skipped,
            stripped_prefixes=remapped.stripped_prefixes,
            arch=model.arch,
        )
        duplicates = remapped.duplicates
        part = "backbone"

    source = _fit_position_embeddings(source, target, model.backbone, "" if part == "backbone" else "backbone.")
    loaded, missing, unexpected = _match(target, source)
    report.loaded, report.missing, report.unexpected = loaded, missing, unexpected + duplicates
    report.matched_fraction = len(loaded) / len(target) if target else 0.0
    if not loaded or report.matched_fraction < MIN_MATCHED_FRACTION:
        unmatched_file = _examples(report.unexpected) or "(none)"
        unmatched_model = _examples(missing) or "(none)"
        raise CheckpointError(
            f"{path} does not fit a {model.arch} {part}: only {len(loaded)}/{len(target)} tensors "
            f"({report.matched_fraction:.0%}) match by name and shape, at least {MIN_MATCHED_FRACTION:.0%} "
            f"are required{_file_arch_hint(content)}. Detected format: {report.format}. "
            f"Unmatched file keys: {unmatched_file}. Model keys not in the file: {unmatched_model}. "
            f"Check {INIT_OPTION} and --arch"
        )
    with torch.no_grad():
        target_module.load_state_dict({name: source[name] for name in loaded}, strict=False)
    return report
