"""Typed run configuration, strict YAML recipes and command-line overrides.

The dataclass defaults are the paper-scale settings; a recipe (one YAML per published setting in
``recipes/``) overrides them, and command-line flags override the recipe. Recipes are strict: a
misspelled key is an error naming the key, the file and the valid keys, never silently ignored.
The resolved configuration is saved in every run folder.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

import uda_reid

from .errors import ConfigError

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # LUPerson fine-tuning configs (what fine-tuning from LUP weights uses) ...
    "lup": ((0.3525, 0.3106, 0.3140), (0.2505, 0.2522, 0.2504)),
    # ... and the statistics LUPerson's MoCo pre-training itself used.
    "lup_pretrain": ((0.3525, 0.3106, 0.3140), (0.2660, 0.2522, 0.2505)),
}


@dataclass
class DataConfig:
    """Images, augmentation and batching."""

    height: int = 256
    width: int = 128
    normalization: str = "imagenet"  # key of NORMALIZATIONS
    interpolation: str = "bicubic"
    flip_prob: float = 0.5
    pad: int = 10
    random_erasing_prob: float = 0.5
    num_instances: int = 4  # K of a P×K batch
    batch_size: int = 64  # P·K
    eval_batch_size: int = 128
    workers: int = 4
    skip_unreadable: bool = False  # warn and skip unreadable images instead of stopping


@dataclass
class ModelConfig:
    """Backbone, pooling, neck and initial weights."""

    arch: str = "resnet50"
    last_stride: int = 1
    pooling: str = "avg"
    neck: bool = True
    extra_bn: bool | None = None  # None: on for LUPerson / UP-ReID initialisations
    init: str | None = None  # imagenet:PATH | lup:PATH | upreid:PATH | PATH of a uda_reid checkpoint


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then steps or a cosine decay)."""

    optimizer: str = "adam"  # adam | sgd
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only (MoCo pre-training: plain momentum)
    schedule: str = "step"  # step: ×gamma at each milestone | cosine: half a cosine to 0 over the run's epochs
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: list[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1


@dataclass
class TrainConfig:
    """Supervised training (ID loss + batch-hard triplet); also stage 1 of UDA."""

    epochs: int = 80
    iters_per_epoch: int = 200  # 0: one pass over the identities
    label_smoothing: float = 0.1
    triplet_margin: float = 0.0  # 0: soft margin softplus(d_ap − d_an)
    id_loss_weight: float = 1.0
    triplet_loss_weight: float = 1.0
    eval_every: int = 10
    # BatchNorm statistics over this many contiguous groups of the (global) batch, as adapt.bn_groups.
    bn_groups: int = 1
    # Under torchrun: SyncBatchNorm, statistics over the whole global batch (GPUs only); needs bn_groups 1.
    sync_bn: bool = False


@dataclass
class ClusteringConfig:
    """The clustering stage run every epoch: kNN -> k-reciprocal Jaccard -> clusterer."""

    clusterer: str = "dbscan"  # dbscan | hdbscan | kmeans
    eps: float | str = 0.6  # dbscan; auto = from the data at the first clustering (Song et al., METHODS.md §9)
    eps_rho: float = 1.6e-3  # eps auto: the share of the smallest pairwise distances averaged
    min_samples: int = 4  # dbscan, hdbscan
    min_cluster_size: int = 4  # hdbscan
    n_clusters: int = 0  # kmeans; 0 = estimate
    k1: int = 30
    k2: int = 6
    knn: str = "auto"


@dataclass
class AdaptConfig:
    """The cluster -> adapt loop (``udareid adapt`` / ``udareid usl``)."""

    method: str = "spcl"
    epochs: int = 50
    iters_per_epoch: int = 400
    # > 0: instead of iters_per_epoch, floor(passes × labelled target images / batch size) iterations
    # (CAP: one pass, GDS's baseline: 70 on each round's pseudo-labels)
    passes_per_epoch: float = 0.0
    # How target (and SpCL's source) batches are drawn: auto (the method's own), multi_gallery
    # (SpCL / cluster-contrast / PPLR), random_identity (open-reid's, Song et al.), proxy_balanced (CAP).
    sampler: str = "auto"
    eval_every: int = 10
    # BatchNorm statistics over this many contiguous groups of the global batch (4: the published
    # 4-GPU DataParallel runs), on any number of processes: G processes (torchrun) compute
    # bn_groups / G groups each, so bn_groups must be a multiple of G.
    bn_groups: int = 1
    # Under torchrun: SyncBatchNorm, statistics over the whole global batch (GPUs only); needs bn_groups 1.
    sync_bn: bool = False
    # > 0: first train a supervised model on the source for this many epochs (with ``train`` and
    # ``optim`` settings) and start adaptation from it, unless model.init is given.
    source_pretrain_epochs: int = 0
    # Keys of the ``optim`` section that differ for the source stage (GDS: source lr 3e-4 with steps,
    # adaptation 6e-5 constant), e.g. {lr: 3.0e-4, milestones: [50, 100]}.
    source_optim: dict[str, Any] = field(default_factory=dict)


@dataclass
class GdsConfig:
    """GDS (Jin et al., ECCV 2020) added to any method's target batches (``--gds`` / ``--gds-hard``).

    The paper pins the initial statistics, λσ and λh; the rest is ours (METHODS.md §3 lists what the
    sources leave open) and each is a key here.
    """

    enabled: bool = False  # --gds
    hard_mining: bool = False  # --gds-hard (also enables GDS)
    weight: float = 1.0  # of L_GDS in the total loss
    lambda_sigma: float = 1.0  # λσ: variance (sharpness) vs mean (separation) terms
    lambda_hard: float = 0.5  # λh: weight of the hard-mining loss
    momentum: float = 0.9  # β: weight the old global statistics keep per batch
    initial_mean: float = 0.5
    initial_variance: float = 0.16666667  # 1/6
    distance: str = "euclidean"  # euclidean (on L2-normalised features) | cosine (1 − cos)
    pairs: str = "all"  # all: every pair of the batch by pseudo-label | hardest: per-anchor batch-hard pairs
    separation: str = "softplus"  # softplus(μ+ − μ− + margin) | hinge: relu(μ+ − μ− + margin)
    margin: float = 0.0
    # updated: loss on the momentum-updated statistics, gradient through the batch share (the
    # supplement's derivation) | batch: loss on the batch's own statistics
    gradient: str = "updated"
    # tail: positives beyond μ+ + kσ+ / negatives below μ− − kσ− are hard | overlap: positives beyond
    # μ− − kσ− / negatives below μ+ + kσ+ (pairs inside the other distribution); k = hard_sigma
    hard_rule: str = "tail"
    hard_sigma: float = 1.0


@dataclass
class CameraProxyConfig:
    """Camera-aware proxies added to any method's losses (``--camera-proxies``; METHODS.md §5).

    One proxy per (cluster, camera), rebuilt every epoch from the clustered features. ``cap``: CAP's
    intra-camera loss, + ``inter_weight`` × its inter-camera loss from ``inter_start_epoch``,
    proxies momentum-updated after each step; ``pplr``: PPLR's inter-camera loss, proxies fixed
    within the epoch. (CAP as published is ``--method cap``.)
    """

    mode: str = "off"  # off | cap | pplr
    weight: float = 0.5  # λcam (PPLR: 1.0 for MSMT17)
    temperature: float = 0.07
    hard_negatives: int = 50
    inter_start_epoch: int = 5  # cap mode
    inter_weight: float = 0.5  # cap mode
    momentum: float = 0.2  # cap mode: weight the old proxy keeps


@dataclass
class PretrainConfig:
    """Self-supervised pre-training (``udareid pretrain``; METHODS.md §7): MoCo v2 as LUPerson ran it,
    or UP-ReID's consistency + intrinsic contrastive objective on top of it."""

    method: str = "moco"  # moco | upreid
    datasets: list[str] = field(default_factory=list)  # their train splits, joined (folder:DIR for a folder)
    epochs: int = 200
    iters_per_epoch: int | None = None  # None: one pass over the images
    batch_size: int = 256  # global (all processes)
    queue_size: int = 65536
    key_momentum: float = 0.999  # EMA of the key encoder
    temperature: float = 0.1  # τ of the global InfoNCE (LUPerson's script; 0.07 in MoCo v2)
    dim: int = 128  # projection size
    last_stride: int = 2  # the plain ResNet of the published pre-training
    bn_groups: int = 8  # BN statistics per chunk of a process's batch; keys shuffled first (MoCo's shuffle BN)
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    erasing_prob: float = 0.5
    erasing_max_area: float = 0.6
    # UP-ReID
    global_weight: float = 0.8  # λg
    patch_weight: float = 0.2  # λp
    patch_temperature: float = 0.1  # τ2
    stripes: int = 4
    columns: int = 2
    consistency_weight: float = 1.0
    mmd: str = "gaussian"  # gaussian (multi-bandwidth) | linear
    eval_every: int = 0  # epochs between frozen-backbone evaluations on eval_datasets (0: at the end only)


@dataclass
class RunConfig:
    """Everything one run needs; saved as ``config.yaml`` in the run folder."""

    dataset: str = "market1501"  # train: the labelled dataset; usl: the unlabelled one
    source: str | None = None  # adapt: labelled source domain (None = USL)
    target: str | None = None  # adapt / usl: the unlabelled target domain
    eval_datasets: list[str] = field(default_factory=list)  # extra domains evaluated at the end
    # Each dataset's own options by registered name: {"folder": {"camera_regex": "none"}, "cuhk03": {"variant": "detected"}}
    dataset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto: the backbone's autocast dtype (uda_reid.precision)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    gds: GdsConfig = field(default_factory=GdsConfig)
    camera_proxies: CameraProxyConfig = field(default_factory=CameraProxyConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # The method's own options, checked strictly by the method against its options dataclass.
    method_options: dict[str, Any] = field(default_factory=dict)


def recipes_dir() -> Path:
    """The repository's ``recipes/`` folder (the package is installed in editable mode)."""
    return Path(os.environ.get("UDAREID_RECIPES", Path(uda_reid.__file__).resolve().parents[1] / "recipes"))


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """A recipe file given as a path, or by name (``spcl_market`` -> ``recipes/spcl_market.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = recipes_dir() / f"{path.name.removesuffix('.yaml')}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
    raise ConfigError(
        f"recipe {str(name_or_path)!r} not found (looked for the file and for {candidate}); "
        f"known recipes: {', '.join(known) or '(none)'}"
    )


@dataclass(frozen=True)
class Limit:
    """The values a numeric key may take: ``low``/``high`` bounds (None: unbounded), open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE, NON_NEGATIVE = Limit(0, low_open=True), Limit(0)
AT_LEAST_ONE, PROBABILITY, FRACTION = Limit(1), Limit(0, 1), Limit(0, 1, high_open=True)
JACCARD_EPS = Limit(0, 1, low_open=True, high_open=True)  # a Jaccard distance lies in [0, 1]

#: What each numeric key (``section.key``) may be, checked wherever it is set (recipe, flag, --set).
LIMITS: dict[str, Limit] = {
    "seed": NON_NEGATIVE,
    **{f"data.{k}": AT_LEAST_ONE for k in ("height", "width", "num_instances", "batch_size", "eval_batch_size")},
    "data.flip_prob": PROBABILITY, "data.random_erasing_prob": PROBABILITY, "data.pad": NON_NEGATIVE,
    "data.workers": NON_NEGATIVE,
    "model.last_stride": Limit(1, 2),
    "optim.lr": POSITIVE, "optim.weight_decay": NON_NEGATIVE, "optim.momentum": FRACTION,
    "optim.warmup_epochs": NON_NEGATIVE, "optim.warmup_factor": Limit(0, 1, low_open=True), "optim.gamma": Limit(0, 1, low_open=True),
    "optim.milestones": NON_NEGATIVE,
    "train.epochs": NON_NEGATIVE, "train.iters_per_epoch": NON_NEGATIVE, "train.label_smoothing": FRACTION,
    "train.triplet_margin": NON_NEGATIVE, "train.id_loss_weight": NON_NEGATIVE, "train.triplet_loss_weight": NON_NEGATIVE,
    "train.eval_every": NON_NEGATIVE, "train.bn_groups": AT_LEAST_ONE,
    "clustering.eps": JACCARD_EPS, "clustering.eps_rho": Limit(0, 1, low_open=True, high_open=True),
    "clustering.min_samples": AT_LEAST_ONE, "clustering.min_cluster_size": Limit(2),
    "clustering.n_clusters": NON_NEGATIVE, "clustering.k1": AT_LEAST_ONE, "clustering.k2": AT_LEAST_ONE,
    "adapt.epochs": NON_NEGATIVE, "adapt.iters_per_epoch": NON_NEGATIVE, "adapt.passes_per_epoch": NON_NEGATIVE,
    "adapt.eval_every": NON_NEGATIVE, "adapt.bn_groups": AT_LEAST_ONE, "adapt.source_pretrain_epochs": NON_NEGATIVE,
    "gds.weight": NON_NEGATIVE, "gds.lambda_sigma": NON_NEGATIVE, "gds.lambda_hard": NON_NEGATIVE,
    "gds.momentum": FRACTION, "gds.initial_mean": Limit(0, 2), "gds.initial_variance": POSITIVE,
    "gds.margin": NON_NEGATIVE, "gds.hard_sigma": NON_NEGATIVE,
    "camera_proxies.weight": NON_NEGATIVE, "camera_proxies.temperature": POSITIVE,
    "camera_proxies.hard_negatives": NON_NEGATIVE, "camera_proxies.inter_start_epoch": NON_NEGATIVE,
    "camera_proxies.inter_weight": NON_NEGATIVE, "camera_proxies.momentum": FRACTION,
}

#: Numeric keys that also take a word.
NUMBER_OR_WORDS: dict[str, tuple[str, ...]] = {"clustering.eps": ("auto",)}

#: What ``precision`` may be (resolved per device by ``uda_reid.precision``).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")

#: The words a string key may be (choices kept by registries are checked by the engine, which knows them).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.normalization": tuple(NORMALIZATIONS),
    "data.interpolation": ("bicubic", "bilinear", "nearest"),
    "optim.optimizer": ("adam", "sgd"),
    "camera_proxies.mode": ("off", "cap", "pplr"),
    "precision": PRECISIONS,
}


def _check_limits(dotted: str, value: Any, where: str) -> None:
    """``value`` of ``dotted`` against LIMITS / CHOICES; the message says where it was set and how."""
    limit, choices = LIMITS.get(dotted), CHOICES.get(dotted)
    if isinstance(value, str) and dotted in NUMBER_OR_WORDS:  # clustering.eps: auto
        if value not in NUMBER_OR_WORDS[dotted]:
            raise ConfigError(f"{where}: {dotted} must be {limit} or one of {', '.join(NUMBER_OR_WORDS[dotted])}, "
                              f"got {value!r}")
        return
    if limit is not None:
        values = value if isinstance(value, list) else [value]
        bad = next((v for v in values if v is not None and not limit.admits(v)), None)
        if bad is not None:
            raise ConfigError(f"{where}: {dotted} must be {limit}, got {bad:g}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {dotted} must be one of {', '.join(choices)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NULL_WORDS = ("null", "~")


def parse_free_value(text: str) -> Any:
    """A command-line value for a key whose type the config does not know (``method_options.*``).

    YAML 1.2's core rules, not YAML 1.1's: ``off``, ``no``, ``yes`` and ``on`` stay words (the method's
    options dataclass gives them a type later); ``true``/``false``, ``null``, numbers and ``[...]`` /
    ``{...}`` are parsed.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in NULL_WORDS:
        return None
    for number in (int, float):
        try:
            return number(stripped)
        except ValueError:
            pass
    if stripped[:1] in ("[", "{"):
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError:
            return text
    return text


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (the few kinds configs use).

    Strings (``--set`` values, quoted YAML) are converted by the field's type, so a string field
    keeps ``off`` or ``no`` as written and a boolean field accepts true/false/yes/no/on/off.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if type(None) in options and (value is None or (isinstance(value, str) and value.strip().lower() in NULL_WORDS)):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if isinstance(value, str) and (origin in (dict, list)):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of keys, got {value!r}")
        return dict(value)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_type)}, got {value!r}")
        return [_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if tp is Any:
        return parse_free_value(value) if isinstance(value, str) else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise ConfigError(f"{where}: expected a boolean (true/false, yes/no, on/off), got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, bool):
            word = "on/yes/true" if value else "off/no/false"
            raise ConfigError(
                f"{where}: expected a string, got the boolean {value!r} (YAML reads an unquoted {word} as a "
                f"boolean: quote it, e.g. \"off\")"
            )
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _key_path(where: str, key: str) -> str:
    """``where`` + ``key`` as messages show it: ``recipe.yaml.optim.lr``, ``--set optim.lr``."""
    return f"{where}{key}" if where.endswith(" ") else f"{where}.{key}"


def update_dataclass(obj: Any, values: Mapping[str, Any], where: str, *, section: str | None = None) -> Any:
    """A copy of dataclass ``obj`` with ``values`` applied; unknown keys and values out of their
    range (LIMITS, CHOICES) are errors.

    ``where`` names the source in messages: a file or section (keys are joined with dots), or an
    option followed by a space (``"--set "``: keys follow it as the user typed them). ``section``:
    the dotted config path of ``obj`` (``"clustering"``); None for the whole RunConfig.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where.rstrip()}: expected a mapping of keys, got {values!r}")
    types_by_name = _field_types(type(obj))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types_by_name:
            raise ConfigError(
                f"{where.rstrip()}: unknown key {key!r}; valid keys: {', '.join(types_by_name)}"
            )
        current = getattr(obj, key)
        path = _key_path(where, key)
        dotted = key if section is None else f"{section}.{key}"
        if dataclasses.is_dataclass(current):
            changes[key] = update_dataclass(current, value, path, section=dotted)
        elif isinstance(current, dict) and isinstance(value, Mapping):
            # free-form sections merge key by key; their values get a type where they are read
            changes[key] = {**current, **{k: _coerce(v, Any, f"{path}.{k}") for k, v in value.items()}}
        else:
            changes[key] = _coerce(value, types_by_name[key], path)
            _check_limits(dotted, changes[key], _set_as_written(path, value))
    return dataclasses.replace(obj, **changes)


def _set_as_written(path: str, value: Any) -> str:
    """How the user set a value, for messages: ``--set clustering.eps=2``, or the recipe file."""
    for suffix in (".yaml", ".yml"):
        if suffix in path:
            return path.split(suffix)[0] + suffix
    return f"{path}={value}"


def load_recipe(path: str | os.PathLike, base: RunConfig | None = None, *, _chain: tuple[Path, ...] = ()) -> RunConfig:
    """Apply the recipe file at ``path`` on top of ``base`` (defaults when None).

    A recipe may start with ``extends: OTHER`` (a recipe name or path): OTHER is applied first and
    this file's keys override it, so a published variant (GDS on the baseline) repeats nothing.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"recipe file {path} is not valid YAML: {error}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"recipe file {path}: expected a mapping of sections, got {type(data).__name__}")
    if "extends" in data:
        data = dict(data)
        parent_name = data.pop("extends")
        sibling = path.parent / f"{str(parent_name).removesuffix('.yaml')}.yaml"
        parent = sibling if sibling.exists() else find_recipe(str(parent_name))
        chain = (*_chain, path.resolve())
        if parent.resolve() in chain:
            names = " -> ".join(p.name for p in (*chain, parent.resolve()))
            raise ConfigError(f"recipe file {path}: 'extends' makes a cycle ({names})")
        base = load_recipe(parent, base, _chain=chain)
    return update_dataclass(base or RunConfig(), data, str(path))


def apply_overrides(config: RunConfig, overrides: Mapping[str, Any], where: str = "option") -> RunConfig:
    """Apply dotted overrides such as ``{"optim.lr": 1e-4}`` or ``{"optim.lr": "1e-4"}``.

    A string is converted by the type of the field it sets (``"off"`` stays a string for a string
    field, ``"[20, 40]"`` becomes a list for a list field), never by YAML 1.1's guesses.
    """
    for dotted, value in overrides.items():
        nested: Any = value
        for part in reversed(dotted.split(".")):
            nested = {part: nested}
        config = update_dataclass(config, nested, f"{where} ")
    return config


def parse_set_options(items: tuple[str, ...] | list[str], option: str = "--set") -> dict[str, str]:
    """``["optim.lr=1e-4", ...]`` -> ``{"optim.lr": "1e-4"}`` (from a repeated ``option``)."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    return update_dataclass(RunConfig(), data, "saved config")


def save_config(config: RunConfig, path: str | os.PathLike) -> None:
    from .fileio import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))
