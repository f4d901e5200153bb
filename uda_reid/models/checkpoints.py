"""Run checkpoints: what a run saves (``last.pt``, ``best.pt``) and how it reads them back.

Format: ``{"format": "uda_reid", "version": 1, "config": <plain dict>, "epoch": int, "model": state
dict, ...}``: only tensors and plain containers, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RunConfig, config_from_dict, config_to_dict
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_torch_save, safe_torch_load

FORMAT = "uda_reid"
VERSION = 1

# Keys that may change between an interrupted run and its resumption without changing its result.
_RESUMABLE_DIFFERENCES = {"device", "precision", "data.workers", "data.eval_batch_size", "train.epochs", "adapt.epochs",
                          "pretrain.epochs", "speed.channels_last", "speed.cudnn_benchmark", "speed.fused_optimizer",
                          "speed.compile"}


def save_checkpoint(path: str | Path, config: RunConfig, epoch: int, **state: Any) -> None:
    """Write atomically: a kill during the write leaves the previous file intact."""
    payload = {"format": FORMAT, "version": VERSION, "config": config_to_dict(config), "epoch": epoch, **state}
    atomic_torch_save(payload, path)


def is_run_checkpoint(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_checkpoint(path: str | Path, expect_config: RunConfig | None = None) -> dict[str, Any]:
    """Read a run checkpoint; with ``expect_config``, refuse one written by a different setting."""
    payload = safe_torch_load(path)
    if not is_run_checkpoint(payload):
        raise CheckpointError(f"{path} is not a uda_reid run checkpoint (no 'format': 'uda_reid' entry)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}; this uda_reid reads version {VERSION}"
        )
    if expect_config is not None:
        check_same_config(payload["config"], expect_config, path)
    return payload


def check_same_config(saved: dict[str, Any], config: RunConfig, path: str | Path) -> None:
    """Refuse to resume the run whose settings ``path`` holds (a checkpoint's or its config.yaml)
    with other settings, naming the keys that differ (device, precision, epochs... may change)."""
    differences = config_differences(_with_defaults(saved), config_to_dict(config))
    differences = [d for d in differences if d[0] not in _RESUMABLE_DIFFERENCES]
    if differences:
        shown = "; ".join(f"{key}: run {old!r}, now {new!r}" for key, old, new in differences[:8])
        raise CheckpointError(
            f"cannot resume from {path}: it was written with another configuration ({shown}). "
            f"Use a new --out folder, or the same recipe and options as the interrupted run"
        )


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """A run's ``config.yaml`` as written (a mapping), or a one-line error naming the file."""
    import yaml

    try:
        saved = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointError(f"{path}: not a readable run config ({error})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a run config (expected a mapping of settings)")
    return saved


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the keys added to ``RunConfig`` since then at their defaults.

    A key introduced later (say ``adapt.sync_bn``) is then not a difference from a run that
    leaves it at its default. A saved config that no longer parses is compared as it is.
    """
    try:
        return config_to_dict(config_from_dict(saved))
    except ConfigError:
        return saved


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two nested config dicts."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            found += config_differences(a, b, dotted + ".")
        elif a != b:
            found.append((dotted, a, b))
    return found
