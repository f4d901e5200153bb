"""Typed run configuration, strict YAML recipes and command-line overrides.

The dataclass defaults are the paper-scale settings; a recipe (one YAML per published setting in
``recipes/``) overrides them, and command-line flags override the recipe. Recipes are strict: a
misspelled key is an error naming the key, the file and the valid keys, never silently ignored.
The resolved configuration is saved in every run folder.

Every setting declares its rule once, next to its field: the type is the annotation, the range or
the allowed words are given to :func:`setting` (``lr: float = setting(3.5e-4, limit=POSITIVE)``),
and relations between keys of a section are its ``relations``. The same declarations check every
source of a value (recipe, ``extends``, ``--set``, flags, ``method_options`` against the method's
``Options``, dataset options against the loader's annotated parameters) with one-line errors such
as ``--set optim.lr=-1: optim.lr must be > 0, got -1``; :func:`check_config` checks a whole config.
Add-ons declare their own sections (their ``Options``), which the RunConfig holds like its own.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import math
import operator
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping

import yaml

from .errors import ConfigError
from .recipe_lookup import extends_target, find_recipe, recipes_dir  # noqa: F401 (the recipe lookup's home)

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # LUPerson fine-tuning configs (what fine-tuning from LUP weights uses) ...
    "lup": ((0.3525, 0.3106, 0.3140), (0.2505, 0.2522, 0.2504)),
    # ... and the statistics LUPerson's MoCo pre-training itself used.
    "lup_pretrain": ((0.3525, 0.3106, 0.3140), (0.2660, 0.2522, 0.2505)),
}

#: What ``precision`` may be (resolved per device by ``uda_reid.precision``).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


# ---- how a setting declares its rule ----------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """The values a number may take: ``low``/``high`` bounds (None: unbounded), open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        if self.low is None:
            return f"< {self.high:g}" if self.high_open else f"<= {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = Limit(0, low_open=True), Limit(0), Limit(1)
PROBABILITY, FRACTION = Limit(0, 1), Limit(0, 1, high_open=True)  # FRACTION: a momentum, a smoothing
UNIT_INTERVAL_OPEN = Limit(0, 1, low_open=True, high_open=True)  # a Jaccard eps, a share
UP_TO_ONE = Limit(0, 1, low_open=True)  # (0, 1]: a factor, a share of an area


@dataclass(frozen=True)
class Rule:
    """What a setting may be besides its type (the field's annotation), declared once next to it.

    ``limit``: the range of a number (of each item of a list). ``choices``: the words a string may be
    (each item of a list): a tuple, or a function returning them, for names kept in a registry and
    looked up only when a value is checked (:func:`names_in`). ``words``: words a number setting
    also takes (``clustering.eps: auto``). ``check``: any other test of the whole value, with
    ``expects`` saying what it wants (a string, or a function returning one). ``options``: a mapping
    whose keys are the fields of a dataclass (``adapt.source_optim``: ``optim`` keys), or the name
    of how they are found: ``"method"`` (the ``Options`` of ``adapt.method``), ``"dataset"`` (each
    registered dataset's options). A setting whose only rule is its type (a boolean, a free path)
    declares ``Rule()`` all the same, so a key without a declaration stands out (:func:`undeclared_keys`).
    """

    limit: Limit | None = None
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    words: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    expects: str | Callable[[], str] = ""
    options: type | str | None = None
    help: str = ""

    def allowed(self) -> tuple[str, ...] | None:
        """The words the setting may be (looked up now for a registry), or None without a list."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def problem(self, value: Any) -> tuple[str, Any] | None:
        """(what the value must be, the part of it that is not), or None when ``value`` obeys the rule."""
        if value is None:
            return None
        if self.words and isinstance(value, str):
            if value in self.words:
                return None
            return f"{self.limit} or {_quoted_choices(self.words)}", value
        items = value if isinstance(value, list) else [value]
        if self.limit is not None:
            bad = next((v for v in items if _is_number(v) and not self.limit.admits(v)), None)
            if bad is not None:
                return str(self.limit), bad
        allowed = self.allowed()
        if allowed is not None:
            bad = next((v for v in items if v not in allowed), _NOTHING)
            if bad is not _NOTHING:
                return _quoted_choices(allowed), bad
        if self.check is not None and not self.check(value):
            return (self.expects() if callable(self.expects) else self.expects) or "valid", value
        return None


_NOTHING = object()

#: Where :func:`setting` keeps a field's :class:`Rule` (``dataclasses.field(metadata=...)``).
RULE_KEY = "uda_reid.config.rule"
#: Marks the field of RunConfig that holds the add-on sections.
_ADD_ON_SECTIONS = "uda_reid.config.add_on_sections"


def setting(default: Any = dataclasses.MISSING, *, limit: Limit | None = None,
            choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None, words: tuple[str, ...] = (),
            check: Callable[[Any], bool] | None = None, expects: str | Callable[[], str] = "",
            options: type | str | None = None, help: str = "") -> Any:
    """A dataclass field that declares its rule (see :class:`Rule`) next to its type and default.

    ``count: int = setting(4, limit=AT_LEAST_ONE, help="...")``; a list or dict default is copied
    for every instance. The rule is checked wherever the value is set (recipe, ``extends``,
    ``--set``, a flag, ``method_options``, dataset options) and by :func:`check_config`.
    """
    rule = Rule(limit=limit, choices=choices, words=tuple(words), check=check, expects=expects, options=options,
                help=help)
    metadata = {RULE_KEY: rule}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def rule_of(field_: dataclasses.Field) -> Rule | None:
    """The rule a dataclass field declares, or None for a field declared without one."""
    return field_.metadata.get(RULE_KEY)


class names_in:  # noqa: N801 (used like a function in declarations)
    """The names in a registry, looked up when a value is checked: ``names_in("uda_reid.methods:METHODS")``.

    The registries import this module, so a declaration names them by import path instead of
    importing them. The object may be a ``Registry``, a mapping (its keys) or a function returning
    names; ``extra`` words come first (``"auto"``).
    """

    def __init__(self, target: str, *extra: str) -> None:
        self.target = target
        self.extra = extra

    def __call__(self) -> tuple[str, ...]:
        module, _, attribute = self.target.partition(":")
        names = getattr(importlib.import_module(module), attribute)
        if callable(names) and not hasattr(names, "names"):
            names = names()
        elif hasattr(names, "names"):
            names = names.names()
        return (*self.extra, *names)

    def __repr__(self) -> str:
        return f"names_in({self.target!r}{''.join(f', {e!r}' for e in self.extra)})"


@dataclass(frozen=True)
class Relation:
    """A rule between keys of one section that the config alone decides, declared on the section
    class as ``relations: ClassVar[tuple[Relation, ...]]`` (keys relative to the section).

    ``holds(value of key, *values of others)`` says whether it holds (not asked when a value is
    None); ``expects`` is what ``key`` must be, formatted with ``keys`` (the others' dotted names)
    and ``values`` (theirs): ``"<= {keys[0]} ({values[0]})"``.
    """

    key: str
    others: tuple[str, ...]
    holds: Callable[..., bool]
    expects: str


def at_most(key: str, bound: str) -> Relation:
    """``key`` <= ``bound``, two keys of the same section."""
    return Relation(key, (bound,), operator.le, "<= {keys[0]} ({values[0]})")


def _quoted_choices(choices: tuple[str, ...]) -> str:
    if len(choices) == 1:
        return repr(choices[0])
    if len(choices) == 2:
        return f"{choices[0]!r} or {choices[1]!r}"
    return f"one of {', '.join(choices)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ascending_pair(value: list[float]) -> bool:
    return len(value) == 2 and value[0] <= value[1]


ASCENDING_PAIR = "[low, high] with low <= high"


def _is_device(value: str) -> bool:
    if value == "auto":
        return True
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        return False
    return True


def _lookup(target: str) -> Any:
    """``"module:attribute"`` of the package, imported when a value is checked: the registries (datasets,
    methods, add-ons) sit in layers above this module and import it, so it names them by path."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(f"uda_reid.{module}"), attribute)


def _dataset_specs_ok(value: str | list[str]) -> bool:
    DATASETS, split_spec = _lookup("data.datasets:DATASETS"), _lookup("data.datasets:split_spec")

    return all(split_spec(spec)[0] in DATASETS for spec in (value if isinstance(value, list) else [value]))


def _dataset_expected(plural: bool) -> Callable[[], str]:
    def expected() -> str:
        DATASETS = _lookup("data.datasets:DATASETS")
        what = "registered datasets" if plural else "a registered dataset"
        return f"{what} ({', '.join(DATASETS.names())}; folder:DIR for a folder of images)"

    return expected


#: The rule of a dataset given by name (``market1501``, an alias, ``folder:DIR``), and of a list of them.
DATASET_SPEC = {"check": _dataset_specs_ok, "expects": _dataset_expected(plural=False)}
DATASET_SPECS = {"check": _dataset_specs_ok, "expects": _dataset_expected(plural=True)}


# ---- the sections -----------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Images, augmentation and batching."""

    height: int = setting(256, limit=AT_LEAST_ONE)
    width: int = setting(128, limit=AT_LEAST_ONE)
    normalization: str = setting("imagenet", choices=tuple(NORMALIZATIONS), help="mean and std of NORMALIZATIONS")
    interpolation: str = setting("bicubic", choices=("bicubic", "bilinear", "nearest"))
    flip_prob: float = setting(0.5, limit=PROBABILITY)
    pad: int = setting(10, limit=NON_NEGATIVE)
    random_erasing_prob: float = setting(0.5, limit=PROBABILITY)
    num_instances: int = setting(4, limit=AT_LEAST_ONE, help="K of a P×K batch")
    batch_size: int = setting(64, limit=AT_LEAST_ONE, help="P·K")
    eval_batch_size: int = setting(128, limit=AT_LEAST_ONE)
    workers: int = setting(4, limit=NON_NEGATIVE)
    skip_unreadable: bool = setting(False, help="warn and skip unreadable images instead of stopping")

    relations: ClassVar[tuple[Relation, ...]] = (at_most("num_instances", "batch_size"),)


@dataclass
class ModelConfig:
    """Backbone, pooling, neck and initial weights."""

    arch: str = setting("resnet50", choices=names_in("uda_reid.models.backbones:BACKBONES"))
    last_stride: int = setting(1, limit=Limit(1, 2))
    pooling: str = setting("avg", choices=names_in("uda_reid.models.necks:POOLINGS"))
    neck: bool = setting(True, help="the BN neck")
    extra_bn: bool | None = setting(None, help="None: on for LUPerson / UP-ReID initialisations")
    init: str | None = setting(
        None, help="imagenet:PATH | lup:PATH | upreid:PATH | moco:PATH | PATH of a uda_reid checkpoint (None: random)")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then steps or a cosine decay)."""

    optimizer: str = setting("adam", choices=("adam", "sgd"))
    lr: float = setting(3.5e-4, limit=POSITIVE)
    weight_decay: float = setting(5e-4, limit=NON_NEGATIVE)
    momentum: float = setting(0.9, limit=FRACTION, help="sgd only")
    nesterov: bool = setting(True, help="sgd only (MoCo pre-training: plain momentum)")
    schedule: str = setting("step", choices=("step", "cosine"),
                            help="step: ×gamma at each milestone | cosine: half a cosine to 0 over the run's epochs")
    warmup_epochs: int = setting(10, limit=NON_NEGATIVE)
    warmup_factor: float = setting(0.01, limit=UP_TO_ONE)
    milestones: list[int] = setting([40, 70], limit=NON_NEGATIVE)
    gamma: float = setting(0.1, limit=UP_TO_ONE)


@dataclass
class TrainConfig:
    """Supervised training (ID loss + batch-hard triplet); also stage 1 of UDA."""

    epochs: int = setting(80, limit=NON_NEGATIVE)
    iters_per_epoch: int = setting(200, limit=NON_NEGATIVE, help="0: one pass over the identities")
    label_smoothing: float = setting(0.1, limit=FRACTION)
    triplet_margin: float = setting(0.0, limit=NON_NEGATIVE, help="0: soft margin softplus(d_ap − d_an)")
    id_loss_weight: float = setting(1.0, limit=NON_NEGATIVE)
    triplet_loss_weight: float = setting(1.0, limit=NON_NEGATIVE)
    eval_every: int = setting(10, limit=NON_NEGATIVE)
    bn_groups: int = setting(
        1, limit=AT_LEAST_ONE,
        help="BatchNorm statistics over this many contiguous groups of the (global) batch, as adapt.bn_groups")
    sync_bn: bool = setting(
        False, help="under torchrun: SyncBatchNorm over the whole global batch (GPUs only); needs bn_groups 1")


@dataclass
class ClusteringConfig:
    """The clustering stage run every epoch: kNN -> k-reciprocal Jaccard -> clusterer."""

    clusterer: str = setting("dbscan", choices=names_in("uda_reid.clustering:CLUSTERERS"))
    eps: float | str = setting(
        0.6, limit=UNIT_INTERVAL_OPEN, words=("auto",),
        help="dbscan; auto = from the data at the first clustering (Song et al., docs/methods.md §9)")
    eps_rho: float = setting(1.6e-3, limit=UNIT_INTERVAL_OPEN,
                             help="eps auto: the share of the smallest pairwise distances averaged")
    min_samples: int = setting(4, limit=AT_LEAST_ONE, help="dbscan, hdbscan")
    min_cluster_size: int = setting(4, limit=Limit(2), help="hdbscan")
    n_clusters: int = setting(0, limit=NON_NEGATIVE, help="kmeans; 0 = estimate")
    k1: int = setting(30, limit=AT_LEAST_ONE)
    k2: int = setting(6, limit=AT_LEAST_ONE)
    knn: str = setting("auto", choices=names_in("uda_reid.clustering:KNN_BACKENDS", "auto"))

    relations: ClassVar[tuple[Relation, ...]] = (at_most("k2", "k1"),)


@dataclass
class AdaptConfig:
    """The cluster -> adapt loop (``udareid adapt`` / ``udareid usl``)."""

    method: str = setting("spcl", choices=names_in("uda_reid.methods:METHODS"))
    epochs: int = setting(50, limit=NON_NEGATIVE)
    iters_per_epoch: int = setting(400, limit=NON_NEGATIVE)
    passes_per_epoch: float = setting(
        0.0, limit=NON_NEGATIVE,
        help="> 0: instead of iters_per_epoch, floor(passes × labelled target images / batch size) iterations "
             "(CAP: one pass, GDS's baseline: 70 on each round's pseudo-labels)")
    sampler: str = setting(
        "auto", choices=names_in("uda_reid.data.samplers:sampler_rules", "auto"),
        help="how target (and SpCL's source) batches are drawn: auto (the method's own), multi_gallery (SpCL / "
             "cluster-contrast / PPLR), random_identity (open-reid's, Song et al.), proxy_balanced (CAP)")
    eval_every: int = setting(10, limit=NON_NEGATIVE)
    bn_groups: int = setting(
        1, limit=AT_LEAST_ONE,
        help="BatchNorm statistics over this many contiguous groups of the global batch (4: the published 4-GPU "
             "DataParallel runs), on any number of processes: G processes (torchrun) compute bn_groups / G groups "
             "each, so bn_groups must be a multiple of G")
    sync_bn: bool = setting(
        False, help="under torchrun: SyncBatchNorm over the whole global batch (GPUs only); needs bn_groups 1")
    source_pretrain_epochs: int = setting(
        0, limit=NON_NEGATIVE,
        help="> 0: first train a supervised model on the source for this many epochs (with train and optim "
             "settings) and start adaptation from it, unless model.init is given")
    source_optim: dict[str, Any] = setting(
        {}, options=OptimConfig,
        help="keys of the optim section that differ for the source stage (GDS: source lr 3e-4 with steps, "
             "adaptation 6e-5 constant), e.g. {lr: 3.0e-4, milestones: [50, 100]}")


@dataclass
class PretrainConfig:
    """Self-supervised pre-training (``udareid pretrain``; docs/methods.md §7): MoCo v2 as LUPerson ran it,
    or UP-ReID's consistency + intrinsic contrastive objective on top of it."""

    method: str = setting("moco", choices=names_in("uda_reid.pretraining:PRETRAINERS"))
    datasets: list[str] = setting([], **DATASET_SPECS, help="their train splits, joined (folder:DIR for a folder)")
    epochs: int = setting(200, limit=NON_NEGATIVE)
    iters_per_epoch: int | None = setting(None, limit=NON_NEGATIVE, help="None or 0: one pass over the images")
    batch_size: int = setting(256, limit=AT_LEAST_ONE, help="global (all processes)")
    queue_size: int = setting(65536, limit=AT_LEAST_ONE)
    key_momentum: float = setting(0.999, limit=FRACTION, help="EMA of the key encoder")
    temperature: float = setting(0.1, limit=POSITIVE,
                                 help="τ of the global InfoNCE (LUPerson's script; 0.07 in MoCo v2)")
    dim: int = setting(128, limit=AT_LEAST_ONE, help="projection size")
    last_stride: int = setting(2, limit=Limit(1, 2), help="the plain ResNet of the published pre-training")
    bn_groups: int = setting(8, limit=AT_LEAST_ONE,
                             help="BN statistics per chunk of the batch; keys shuffled first (MoCo's shuffle BN)")
    crop_scale: list[float] = setting([0.2, 1.0], limit=UP_TO_ONE, check=_ascending_pair, expects=ASCENDING_PAIR)
    grayscale_prob: float = setting(0.2, limit=PROBABILITY)
    blur_prob: float = setting(0.5, limit=PROBABILITY)
    blur_sigma: list[float] = setting([0.1, 2.0], limit=POSITIVE, check=_ascending_pair, expects=ASCENDING_PAIR)
    erasing_prob: float = setting(0.5, limit=PROBABILITY)
    erasing_max_area: float = setting(0.6, limit=UP_TO_ONE)
    # UP-ReID
    global_weight: float = setting(0.8, limit=NON_NEGATIVE, help="λg")
    patch_weight: float = setting(0.2, limit=NON_NEGATIVE, help="λp")
    patch_temperature: float = setting(0.1, limit=POSITIVE, help="τ2")
    stripes: int = setting(4, limit=AT_LEAST_ONE)
    columns: int = setting(2, limit=AT_LEAST_ONE)
    consistency_weight: float = setting(1.0, limit=NON_NEGATIVE)
    mmd: str = setting("gaussian", choices=names_in("uda_reid.losses.contrastive:MMD_ESTIMATORS"),
                       help="gaussian (multi-bandwidth) | linear")
    eval_every: int = setting(0, limit=NON_NEGATIVE,
                              help="epochs between frozen-backbone evaluations on eval_datasets (0: at the end only)")

    relations: ClassVar[tuple[Relation, ...]] = (
        Relation("bn_groups", ("batch_size",), lambda groups, batch: batch % groups == 0,
                 "a divisor of {keys[0]} ({values[0]})"),
    )


# ---- sections declared elsewhere (add-ons) ----------------------------------------------------


def section_types() -> dict[str, type]:
    """The top-level sections declared outside this module, by name: every registered add-on's
    ``Options`` under its ``section`` (``gds``, ``camera_proxies``; plug-ins' too).

    Looked up when needed: the add-on modules import this one, so it cannot import them first.
    """
    ADD_ONS = _lookup("addons:ADD_ONS")
    kinds = [ADD_ONS.get(name) for name in ADD_ONS.names()]
    return {kind.section: kind.Options for kind in kinds if kind.section and kind.Options is not None}


#: Names the add-on sections' classes had in this module; they live in their add-on modules now.
_SECTION_CLASSES = {"GdsConfig": "gds", "CameraProxyConfig": "camera_proxies"}


def __getattr__(name: str) -> Any:
    if name in _SECTION_CLASSES:
        return section_types()[_SECTION_CLASSES[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class _RunFields:
    """The fields of :class:`RunConfig` this module declares."""

    dataset: str = setting("market1501", **DATASET_SPEC, help="train: the labelled dataset; usl: the unlabelled one")
    source: str | None = setting(None, **DATASET_SPEC, help="adapt: labelled source domain (None = USL)")
    target: str | None = setting(None, **DATASET_SPEC, help="adapt / usl: the unlabelled target domain")
    eval_datasets: list[str] = setting([], **DATASET_SPECS, help="extra domains evaluated at the end")
    dataset_options: dict[str, dict[str, Any]] = setting(
        {}, options="dataset",
        help="each dataset's own options by registered name, declared by its loader: "
             '{"folder": {"camera_regex": "none"}, "cuhk03": {"variant": "detected"}}')
    seed: int = setting(1, limit=NON_NEGATIVE)
    device: str = setting("auto", check=_is_device, expects="auto, cpu, cuda or cuda:N")
    precision: str = setting("fp32", choices=PRECISIONS,
                             help="the backbone's autocast dtype; auto: per device (uda_reid.precision)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    method_options: dict[str, Any] = setting({}, options="method",
                                             help="the options of adapt.method, checked against its Options")
    #: The add-on sections (``section_types``) by name; recipes and ``config_to_dict`` show them as
    #: top-level sections and code reads them as attributes (``config.gds.enabled``).
    add_on_sections: dict[str, Any] = field(default_factory=dict, metadata={_ADD_ON_SECTIONS: True})


class RunConfig(_RunFields):
    """Everything one run needs; saved as ``config.yaml`` in the run folder.

    Its sections are this module's (``data``, ``model``... fields) and those the add-ons declare
    (``gds``, ``camera_proxies``): each is a top-level recipe section, an attribute, and a keyword of
    the constructor and of ``dataclasses.replace``.
    """

    def __init__(self, *args: Any, **values: Any) -> None:
        types_ = section_types()
        given = {name: values.pop(name) for name in list(values) if name in types_}
        super().__init__(*args, **values)
        sections = {name: kind() for name, kind in types_.items()}
        sections.update(self.add_on_sections)
        sections.update(given)
        self.__dict__["add_on_sections"] = sections

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("add_on_sections") if not name.startswith("__") else None
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        sections = self.__dict__.get("add_on_sections")
        if sections is not None and name in sections:
            sections[name] = value
        else:
            super().__setattr__(name, value)


# ---- checking values --------------------------------------------------------------------------


class _Invalid(Exception):
    """A value that is not what its setting must be: ``requirement`` ("an integer"), the value."""

    def __init__(self, requirement: str, value: Any, hint: str = "") -> None:
        super().__init__(requirement)
        self.requirement, self.value, self.hint = requirement, value, hint


@dataclass(frozen=True)
class _Source:
    """Where values come from, for messages: an option (``"--set "``: each key is shown as typed,
    ``--set optim.lr=-1``), something named (a recipe file, "saved config"), or nothing (code)."""

    kind: str  # "option" | "named" | "because" (another key's value made these wrong) | "none"
    text: str = ""

    def context(self, section: str | None) -> str:
        """Before ``unknown key``: ``--set optim``, ``recipe.yaml.optim``, ``method_options``."""
        if self.kind == "option":
            return f"{self.text}{section or ''}".rstrip()
        if self.kind == "named":
            return f"{self.text}.{section}" if section else self.text
        if self.kind == "because":
            return f"{self.text}: {section}" if section else self.text
        return section or "config"

    def prefix(self, dotted: str | None, raw: Any = None) -> str:
        """Before ``KEY must be``: ``--set optim.lr=-1: ``, ``recipe.yaml: ``, nothing for code."""
        if self.kind == "option":
            return f"{self.text}{dotted}={raw}: " if dotted is not None else f"{self.text.rstrip()}: "
        if self.kind in ("named", "because"):
            return f"{self.text}: "
        return ""


_NO_SOURCE = _Source("none")
_SECTION_NAME = re.compile(r"[A-Za-z_]\w*(\.\w+)*")


def _source_of(where: str, obj: Any, section: str | None) -> tuple[_Source, str | None]:
    """``update_dataclass``'s ``where``: an option (ends with a space), the dotted name of the section
    ``obj`` is (``"method_options"``, ``"adapt.source_optim"``), or the name of a file or source."""
    if where.endswith(" "):
        return _Source("option", where), section
    if section is None and not isinstance(obj, _RunFields) and _SECTION_NAME.fullmatch(where):
        return _NO_SOURCE, where
    return _Source("named", where), section


def _shown(value: Any) -> str:
    if _is_number(value):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return repr(value)


def _value_error(source: _Source, dotted: str, raw: Any, requirement: str, bad: Any, hint: str = "") -> ConfigError:
    return ConfigError(f"{source.prefix(dotted, raw)}{dotted} must be {requirement}, got {_shown(bad)}{hint}")


def _join(section: str | None, key: str) -> str:
    return key if section is None else f"{section}.{key}"


def _type_name(tp: Any, plural: bool = False) -> str:
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
             bool: ("a boolean", "booleans")}
    if tp in names:
        return names[tp][plural]
    return getattr(tp, "__name__", str(tp))


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NULL_WORDS = ("null", "~")


def parse_free_value(text: str) -> Any:
    """A command-line value for a key whose type the config does not know yet.

    YAML 1.2's core rules, not YAML 1.1's: ``off``, ``no``, ``yes`` and ``on`` stay words (the
    declaring dataclass gives them a type); ``true``/``false``, ``null``, numbers and ``[...]`` /
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


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as the annotation ``tp`` (the few kinds configs use), or :class:`_Invalid`.

    Strings (``--set`` values, quoted YAML) are converted by the field's type, so a string field
    keeps ``off`` or ``no`` as written and a boolean field accepts true/false/yes/no/on/off.
    """
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _coerce(value, typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if type(None) in options and (value is None or (isinstance(value, str) and value.strip().lower() in NULL_WORDS)):
            return None
        failures: list[_Invalid] = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except _Invalid as invalid:
                failures.append(invalid)
        requirements = [f.requirement for f in failures] + (["null"] if type(None) in options else [])
        raise _Invalid(" or ".join(requirements), value, next((f.hint for f in failures if f.hint), ""))
    if isinstance(value, str) and origin in (dict, list):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Invalid("a mapping of keys", value)
        return dict(value)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"a list of {_type_name(item_type, plural=True)}", value)
        try:
            return [_coerce(item, item_type) for item in value]
        except _Invalid as invalid:
            raise _Invalid(f"a list of {_type_name(item_type, plural=True)}", invalid.value) from None
    if tp is Any:
        return parse_free_value(value) if isinstance(value, str) else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise _Invalid("a boolean (true/false, yes/no, on/off)", value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _Invalid("an integer", value)
        try:
            return int(value)
        except ValueError:
            raise _Invalid("an integer", value) from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _Invalid("a number", value)
        try:
            return float(value)
        except ValueError:
            raise _Invalid("a number", value) from None
    if tp is str:
        if isinstance(value, bool):
            word = "on/yes/true" if value else "off/no/false"
            raise _Invalid("a string", value, f" (YAML reads an unquoted {word} as a boolean: quote it, e.g. \"off\")")
        if not isinstance(value, str):
            raise _Invalid("a string", value)
        return value
    if tp is os.PathLike:
        if not isinstance(value, os.PathLike):
            raise _Invalid("a path", value)
        return value
    raise TypeError(f"unsupported config type {tp!r}")


@functools.lru_cache(maxsize=None)
def _field_settings(cls: type) -> dict[str, tuple[Any, Rule | None]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], rule_of(f)) for f in dataclasses.fields(cls) if not f.metadata.get(_ADD_ON_SECTIONS)}


def _settings_of(obj_or_cls: Any) -> dict[str, tuple[Any, Rule | None]]:
    """Each setting of a section (dataclass or instance): name -> (annotation, declared rule).

    A :class:`RunConfig` adds the add-on sections after its own fields.
    """
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    declared = dict(_field_settings(cls))
    if issubclass(cls, _RunFields):
        declared.update({name: (kind, None) for name, kind in section_types().items()})
    return declared


def _sections_of(cls: type) -> list[str]:
    return [name for name, (tp, _) in _settings_of(cls).items() if dataclasses.is_dataclass(tp)]


def _update(obj: Any, values: Any, source: _Source, section: str | None) -> Any:
    """A copy of the dataclass ``obj`` with ``values`` (a mapping, nested for sections) applied, each
    checked against its declaration; unknown keys and bad values raise a one-line ConfigError."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source.context(section)}: expected a mapping of keys, got {values!r}")
    declared = _settings_of(obj)
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in declared:
            raise ConfigError(f"{source.context(section)}: unknown key {key!r}; "
                              f"valid keys: {', '.join(declared) or '(none)'}")
        tp, rule = declared[key]
        dotted = _join(section, key)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(tp) and dataclasses.is_dataclass(current):
            changes[key] = _update(current, raw, source, dotted)
            continue
        try:
            value = _coerce(raw, tp)
        except _Invalid as invalid:
            raise _value_error(source, dotted, raw, invalid.requirement, invalid.value, invalid.hint) from None
        if rule is not None and rule.options is not None:
            changes[key] = _update_mapping(current, value, rule.options, source, dotted)
            continue
        problem = rule.problem(value) if rule is not None else None
        if problem is not None:
            raise _value_error(source, dotted, raw, *problem)
        changes[key] = value
    return dataclasses.replace(obj, **changes)


def _update_mapping(current: dict, values: dict, options: type | str, source: _Source, dotted: str) -> dict:
    """A mapping setting whose keys are declared elsewhere, merged key by key: ``adapt.source_optim``
    (``optim`` keys, checked now), ``dataset_options`` (each dataset's, checked now),
    ``method_options`` (kept as written here; checked against the method once ``adapt.method`` is
    known, by :func:`_check_method_options`)."""
    if options == "method":
        return {**current, **{k: _coerce(v, Any) for k, v in values.items()}}
    if options == "dataset":
        DATASETS, split_spec = _lookup("data.datasets:DATASETS"), _lookup("data.datasets:split_spec")
        dataset_options_type = _lookup("data.datasets:dataset_options_type")

        merged = {name: dict(given) for name, given in current.items()}
        for name, given in values.items():
            registered = split_spec(str(name))[0]
            if registered not in DATASETS:
                raise ConfigError(f"{source.context(dotted)}: unknown key {name!r}; "
                                  f"valid keys: {', '.join(DATASETS.names())}")
            where = f"{dotted}.{registered}"
            try:
                given = _coerce(given, dict[str, Any])
            except _Invalid as invalid:
                raise _value_error(source, where, given, "a mapping of the dataset's options", invalid.value) from None
            parsed = _update(dataset_options_type(registered)(), given, source, where)
            merged.setdefault(registered, {}).update({k: getattr(parsed, k) for k in given})
        return merged
    parsed = _update(options(), values, source, dotted)
    return {**current, **{k: getattr(parsed, k) for k in values}}


def _flat(values: Any, prefix: str | None = None) -> dict[str, Any]:
    """Nested mapping -> {dotted key: value as given} (what an update touched, for messages)."""
    if not isinstance(values, Mapping) or not values:
        return {prefix: values} if prefix is not None else {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flat(value, _join(prefix, str(key))))
    return flat


def _blame(source: _Source, touched: dict[str, Any], keys: Iterable[str]) -> str:
    """The prefix naming the latest of ``keys`` (or a key under one) the update set, else the source."""
    keys = tuple(keys)
    for dotted in reversed(list(touched)):
        if any(dotted == k or dotted.startswith(f"{k}.") for k in keys):
            return source.prefix(dotted, touched[dotted])
    return source.prefix(None) if source.kind != "none" else ""


def _check_relations(obj: Any, section: str | None, source: _Source, touched: dict[str, Any] | None) -> None:
    """Every relation of ``obj``'s class and of its sections (those the update touched, or all when
    ``touched`` is None)."""
    for relation in getattr(type(obj), "relations", ()):
        keys = [_join(section, k) for k in (relation.key, *relation.others)]
        if touched is not None and not any(d == k or d.startswith(f"{k}.") for d in touched for k in keys):
            continue
        value, *others = (getattr(obj, k) for k in (relation.key, *relation.others))
        if value is None or any(o is None for o in others) or relation.holds(value, *others):
            continue
        expects = relation.expects.format(keys=keys[1:], values=[_shown(o) for o in others])
        raise ConfigError(f"{_blame(source, touched or {}, keys)}{keys[0]} must be {expects}, got {_shown(value)}")
    for name in _sections_of(type(obj)):
        _check_relations(getattr(obj, name), _join(section, name), source, touched)


def _method_options_type(config: RunConfig) -> type:
    METHODS = _lookup("methods:METHODS")
    method = config.adapt.method
    if method not in METHODS:
        raise ConfigError(f"adapt.method must be {_quoted_choices(tuple(METHODS.names()))}, got {method!r}")
    return METHODS.get(method).Options


def _check_method_options(config: RunConfig, source: _Source, touched: dict[str, Any] | None) -> RunConfig:
    """``config`` with ``method_options`` checked against the ``Options`` of ``adapt.method`` and
    typed by them. A bad key is named with how it was set, or with ``adapt.method`` when choosing
    the method made a key set earlier wrong; ``touched`` None: every key, named without a source."""
    options_type = _method_options_type(config)
    parsed, typed = options_type(), {}
    for key, value in config.method_options.items():
        dotted = f"method_options.{key}"
        if touched is None:
            key_source = _NO_SOURCE
        elif dotted in touched:
            key_source, value = source, touched[dotted]  # the value as given, for the message
        elif "adapt.method" in touched:
            key_source = _Source("because", source.prefix("adapt.method", touched["adapt.method"]).removesuffix(": "))
        else:
            key_source = source
        parsed = _update(parsed, {key: value}, key_source, "method_options")
        typed[key] = getattr(parsed, key)
    _check_relations(parsed, "method_options", source if touched is not None else _NO_SOURCE, touched)
    return dataclasses.replace(config, method_options=typed)


def _check_run(config: RunConfig, source: _Source, touched: dict[str, Any]) -> RunConfig:
    """After an update of a whole config: the method's options and the relations the update touched."""
    if any(d == "adapt.method" or d.startswith("method_options") for d in touched):
        config = _check_method_options(config, source, touched)
    _check_relations(config, None, source, touched)
    return config


def _check_values(obj: Any, section: str | None) -> None:
    """Each setting of ``obj`` (recursively) against its type and rule, as if it had been set now."""
    for key, (tp, rule) in _settings_of(obj).items():
        value, dotted = getattr(obj, key), _join(section, key)
        if dataclasses.is_dataclass(tp) and dataclasses.is_dataclass(value):
            _check_values(value, dotted)
            continue
        if rule is not None and rule.options == "method":
            continue  # by _check_method_options
        _update(obj, {key: value}, _NO_SOURCE, section)


def check_section(options: Any, section: str) -> None:
    """Every setting of the section ``options`` (a dataclass instance, e.g. built with
    ``dataclasses.replace`` rather than set through a recipe or option) against its declaration,
    and the section's relations; the one-line ConfigError names ``section.key``."""
    _check_values(options, section)
    _check_relations(options, section, _NO_SOURCE, None)


def check_config(config: RunConfig) -> None:
    """Every rule of ``config`` at once, wherever its values came from (a recipe, options, or code
    such as ``dataclasses.replace``): each setting of each section against its declaration, every
    relation between keys, the options of ``adapt.method`` (its ``Options``) and of each dataset.
    Cheap and free of side effects: call it before any work. Raises the first broken rule as a
    one-line ConfigError naming the key."""
    _check_values(config, None)
    _check_relations(config, None, _NO_SOURCE, None)
    _check_method_options(config, _NO_SOURCE, None)


def _declaration(dotted: str) -> tuple[Any, Rule | None] | None:
    obj: Any = RunConfig
    *sections, key = dotted.split(".")
    for name in sections:
        declared = _settings_of(obj)
        if name not in declared or not dataclasses.is_dataclass(declared[name][0]):
            return None
        obj = declared[name][0]
    return _settings_of(obj).get(key)


def choices_of(dotted: str) -> tuple[str, ...] | None:
    """The words the key ``dotted`` (``camera_proxies.mode``) may be, or None for a key without a list."""
    declaration = _declaration(dotted)
    return declaration[1].allowed() if declaration is not None and declaration[1] is not None else None


def undeclared_keys(cls: type, section: str | None = None) -> list[str]:
    """The dotted keys of the dataclass ``cls`` (and its sections) declared without a rule
    (a plain default instead of :func:`setting`)."""
    missing = []
    for key, (tp, rule) in _settings_of(cls).items():
        if dataclasses.is_dataclass(tp):
            missing += undeclared_keys(tp, _join(section, key))
        elif rule is None:
            missing.append(_join(section, key))
    return missing


@functools.lru_cache(maxsize=None)
def options_of_function(function: Callable[..., Any]) -> type:
    """The keyword-only parameters of ``function`` as an options dataclass, each declaring its rule
    in its annotation, ``Annotated[str, Rule(choices=...)]`` (a dataset loader's options)."""
    hints = typing.get_type_hints(function, include_extras=True)
    specs = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        tp, metadata = hints.get(parameter.name, Any), {}
        if typing.get_origin(tp) is typing.Annotated:
            tp, *extras = typing.get_args(tp)
            metadata = {RULE_KEY: rule} if (rule := next((e for e in extras if isinstance(e, Rule)), None)) else {}
        default = None if parameter.default is inspect.Parameter.empty else parameter.default
        specs.append((parameter.name, tp, field(default=default, metadata=metadata)))
    return dataclasses.make_dataclass(f"{function.__name__}_options", specs)


def update_dataclass(obj: Any, values: Mapping[str, Any], where: str, *, section: str | None = None) -> Any:
    """A copy of dataclass ``obj`` with ``values`` applied, each checked against its declaration;
    unknown keys, values of the wrong type or out of their declared range, and broken relations
    are one-line ConfigErrors.

    ``where`` names the source in messages: an option followed by a space (``"--set "``: keys are
    shown as typed, ``--set optim.lr=-1``), the dotted name of the section ``obj`` is when it is
    checked on its own (``"method_options"``, ``"adapt.source_optim"``), or a file or other source
    (``"recipe.yaml"``, ``"saved config"``). ``section``: the dotted config path of ``obj``
    (``"clustering"``); None for the whole RunConfig.
    """
    source, section = _source_of(where, obj, section)
    touched = _flat(values, section)
    updated = _update(obj, values, source, section)
    if isinstance(updated, _RunFields):
        return _check_run(updated, source, touched)
    _check_relations(updated, section, source, touched)
    return updated


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
        parent = extends_target(path, str(parent_name))
        chain = (*_chain, path.resolve())
        if parent.resolve() in chain:
            names = " -> ".join(p.name for p in (*chain, parent.resolve()))
            raise ConfigError(f"recipe file {path}: 'extends' makes a cycle ({names})")
        base = load_recipe(parent, base, _chain=chain)
    return update_dataclass(base or RunConfig(), data, str(path))


def apply_overrides(config: RunConfig, overrides: Mapping[str, Any], where: str = "option") -> RunConfig:
    """Apply dotted overrides such as ``{"optim.lr": 1e-4}`` or ``{"optim.lr": "1e-4"}``.

    A string is converted by the type of the field it sets (``"off"`` stays a string for a string
    field, ``"[20, 40]"`` becomes a list for a list field), never by YAML 1.1's guesses. Each value
    is checked against its declaration as it is set; the relations between keys and the method's
    options once all are set (so their order does not matter), each error naming the override as
    typed (``--set clustering.k1=3: clustering.k2 must be <= clustering.k1 (3), got 6``).
    """
    source = _Source("option", f"{where} ")
    touched: dict[str, Any] = {}
    for dotted, value in overrides.items():
        nested: Any = value
        for part in reversed(dotted.split(".")):
            nested = {part: nested}
        config = _update(config, nested, source, None)
        touched.update(_flat(value, dotted))
    return _check_run(config, source, touched)


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
    """Plain data of a config or section; a RunConfig's add-on sections are top-level keys."""
    data = dataclasses.asdict(config)
    if isinstance(config, _RunFields):
        data.update(data.pop("add_on_sections"))
    return data


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    return update_dataclass(RunConfig(), data, "saved config")


def save_config(config: RunConfig, path: str | os.PathLike) -> None:
    from .fileio import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))
