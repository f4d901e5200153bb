"""The sections of a run's configuration and :class:`RunConfig`, which holds them and the sections the
add-ons declare. The dataclass defaults are the paper-scale settings; each field declares its rule
(:mod:`uda_reid.config.rules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .rules import (
    _ADD_ON_SECTIONS,
    ASCENDING_PAIR,
    AT_LEAST_ONE,
    DATASET_SPEC,
    DATASET_SPECS,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    UNIT_INTERVAL_OPEN,
    UP_TO_ONE,
    Limit,
    _is_transformer,
    Relation,
    _ascending_pair,
    _is_device,
    _lookup,
    at_most,
    names_in,
    setting,
)

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # LUPerson fine-tuning configs (what fine-tuning from LUP weights uses) ...
    "lup": ((0.3525, 0.3106, 0.3140), (0.2505, 0.2522, 0.2504)),
    # ... and the statistics LUPerson's MoCo pre-training itself used.
    "lup_pretrain": ((0.3525, 0.3106, 0.3140), (0.2660, 0.2522, 0.2505)),
    # TransReID-SSL's fine-tuning of its LUPerson ViTs (their --self-norm).
    "lup_vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
#: ``data.normalization: auto``: the statistics the initial weights were trained with
#: (``uda_reid.models.normalization``).
AUTO_NORMALIZATION = "auto"
#: The patch size of the registered transformers (``uda_reid.models.vit``): image sides must divide by it.
PATCH = 16

#: What ``precision`` may be (resolved per device by ``uda_reid.precision``).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def _one_per_channel(value: list[float]) -> bool:
    return len(value) == 3


@dataclass
class DataConfig:
    """Images, augmentation and batching."""

    height: int = setting(256, limit=AT_LEAST_ONE)
    width: int = setting(128, limit=AT_LEAST_ONE)
    normalization: str = setting(
        AUTO_NORMALIZATION, choices=(AUTO_NORMALIZATION, *NORMALIZATIONS),
        help="mean and std of NORMALIZATIONS; auto: those the initial weights were trained with (imagenet for "
             "ImageNet or random weights, lup for LUPerson ResNets, lup_vit for LUPerson ViTs, a run's own)")
    interpolation: str = setting("bicubic", choices=("bicubic", "bilinear", "nearest"))
    flip_prob: float = setting(0.5, limit=PROBABILITY)
    pad: int = setting(10, limit=NON_NEGATIVE)
    random_erasing_prob: float = setting(0.5, limit=PROBABILITY)
    erasing: str = setting(
        "reference", choices=("reference", "cap", "torchvision"),
        help="reference: Zhong et al.'s RandomErasing as SpCL, cluster-contrast and PPLR apply it (the erasing_* "
             "keys); cap: CAP's copy of it (a rectangle may span a whole side; its recipes set area 2-20 %, aspect "
             "0.3-3); torchvision: transforms.RandomErasing(value=0), area 2-33 %, log-uniform aspect, 10 attempts")
    erasing_area: list[float] = setting([0.02, 0.4], check=_ascending_pair, expects=ASCENDING_PAIR, limit=UP_TO_ONE,
                                        help="reference: the erased share of the image, uniform in [low, high]")
    erasing_min_aspect: float = setting(0.3, limit=UP_TO_ONE,
                                        help="reference / cap: height/width uniform in [this, erasing_max_aspect]")
    erasing_max_aspect: float | None = setting(None, limit=POSITIVE,
                                               help="reference / cap: None = 1 / erasing_min_aspect (the reference's)")
    erasing_fill: list[float] = setting([0.485, 0.456, 0.406], check=_one_per_channel, expects="three numbers (R, G, B)",
                                        help="reference: per channel, the value the erased pixels get after normalising")
    erasing_attempts: int = setting(100, limit=AT_LEAST_ONE,
                                    help="reference: rectangles drawn until one fits inside the image")
    num_instances: int = setting(4, limit=AT_LEAST_ONE, help="K of a P×K batch")
    batch_size: int = setting(64, limit=AT_LEAST_ONE, help="P·K")
    eval_batch_size: int = setting(128, limit=AT_LEAST_ONE)
    workers: int = setting(4, limit=NON_NEGATIVE)
    skip_unreadable: bool = setting(False, help="warn and skip unreadable images instead of stopping")

    relations: ClassVar[tuple[Relation, ...]] = (at_most("num_instances", "batch_size"),
                                                 at_most("erasing_min_aspect", "erasing_max_aspect"))


@dataclass
class ModelConfig:
    """Backbone, pooling, neck and initial weights."""

    arch: str = setting("resnet50", choices=names_in("uda_reid.models.backbones:BACKBONES"))
    last_stride: int = setting(1, limit=Limit(1, 2), help="convolutional backbones")
    pooling: str = setting("avg", choices=names_in("uda_reid.models.necks:POOLINGS", "token"),
                           help="avg | gem | max for a convolutional map; token (the class token) for a transformer")
    neck: bool = setting(True, help="the BN neck")
    extra_bn: bool | None = setting(None, help="None: on for LUPerson / UP-ReID initialisations of a ResNet")
    drop_path: float = setting(0.0, limit=FRACTION,
                               help="a transformer's stochastic depth, rising to this over its blocks")
    init: str | None = setting(
        None, help="imagenet:PATH | lup:PATH | upreid:PATH | moco:PATH | PATH of a uda_reid checkpoint (None: random)")

    relations: ClassVar[tuple[Relation, ...]] = (
        Relation("pooling", ("arch",), lambda pooling, arch: (pooling == "token") == _is_transformer(arch),
                 "'token' for a transformer and avg, gem or max for a convolutional backbone "
                 "({keys[0]} {values[0]})"),
        Relation("extra_bn", ("arch",), lambda extra_bn, arch: not (extra_bn and _is_transformer(arch)),
                 "off for a transformer ({keys[0]} {values[0]}): the extra BN re-calibrates a convolutional map"),
        Relation("drop_path", ("arch",), lambda drop_path, arch: drop_path == 0 or _is_transformer(arch),
                 "0 for a convolutional backbone ({keys[0]} {values[0]}): drop path acts on transformer blocks"),
        Relation("last_stride", ("arch",), lambda last_stride, arch: last_stride == 1 or not _is_transformer(arch),
                 "1 for a transformer ({keys[0]} {values[0]}): its patch grid has no last stride"),
    )


#: ``speed`` switches: ``auto`` = on a GPU, off on a CPU.
AUTO_ON_OFF = ("auto", "on", "off")


@dataclass
class SpeedConfig:
    """How the device runs the network (uda_reid.engine.device_speed). None of these changes what is
    computed beyond float rounding (tested); a run may resume with other values."""

    channels_last: str = setting("auto", choices=AUTO_ON_OFF,
                                 help="convolutional backbones in channels-last (NHWC) layout, the one tensor cores "
                                      "convolve fast (bf16 / fp16 above all)")
    cudnn_benchmark: str = setting("auto", choices=AUTO_ON_OFF,
                                   help="cuDNN times its convolution algorithms once per input size and keeps the "
                                        "fastest (the training size is fixed)")
    fused_optimizer: str = setting("auto", choices=AUTO_ON_OFF,
                                   help="the optimiser step as one fused kernel (torch's fused Adam / AdamW / SGD)")
    compile: bool = setting(False, help="torch.compile the network (in place: checkpoints keep their keys); the "
                                        "first steps are slow while it compiles")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then steps or a cosine decay)."""

    optimizer: str = setting("adam", choices=("adam", "adamw", "sgd"))
    lr: float = setting(3.5e-4, limit=POSITIVE)
    weight_decay: float = setting(5e-4, limit=NON_NEGATIVE)
    final_weight_decay: float | None = setting(
        None, limit=NON_NEGATIVE, help="None: constant; else the weight decay follows half a cosine from weight_decay "
                                       "to this over the run's epochs (DINO: 0.04 -> 0.4)")
    bias_lr_factor: float = setting(1.0, limit=POSITIVE, help="biases train at lr x this (TransReID: 2)")
    decay_bias_and_norm: bool = setting(
        True, help="false: biases and one-dimensional weights (norms) get no weight decay (DINO's parameter groups)")
    clip_grad_per_parameter: float = setting(
        0.0, limit=NON_NEGATIVE, help="> 0: each parameter's gradient norm is clipped to this (DINO's clip_grad 3.0)")
    momentum: float = setting(0.9, limit=FRACTION, help="sgd only")
    nesterov: bool = setting(True, help="sgd only (MoCo pre-training: plain momentum)")
    schedule: str = setting("step", choices=("step", "cosine"),
                            help="step: ×gamma at each milestone | cosine: half a cosine to min_lr_factor × lr over "
                                 "the run's epochs, counted from epoch 0")
    warmup_epochs: int = setting(10, limit=NON_NEGATIVE,
                                 help="linear from warmup_factor × lr: multiplies the step schedule (BoT), replaces the "
                                      "cosine until it ends (timm's cosine scheduler, as TransReID)")
    warmup_factor: float = setting(0.01, limit=UP_TO_ONE)
    min_lr_factor: float = setting(0.0, limit=PROBABILITY, help="cosine: the last lr, as a share of lr")
    milestones: list[int] = setting([40, 70], limit=NON_NEGATIVE)
    gamma: float = setting(0.1, limit=UP_TO_ONE)


@dataclass
class TrainConfig:
    """Supervised training (ID loss + batch-hard triplet); also stage 1 of UDA."""

    epochs: int = setting(80, limit=NON_NEGATIVE)
    iters_per_epoch: int = setting(200, limit=NON_NEGATIVE, help="0: one pass over the identities")
    passes_per_epoch: float = setting(
        0.0, limit=NON_NEGATIVE,
        help="> 0: instead of iters_per_epoch, floor(passes × labelled images / batch size) iterations "
             "(TransReID's identity sampler makes an epoch about one pass over the images)")
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
    source_data: dict[str, Any] = setting(
        {}, options=DataConfig,
        help="keys of the data section that differ for the source stage, e.g. {batch_size: 64, num_instances: 4} "
             "(TransReID-SSL's supervised source model)")
    source_model: dict[str, Any] = setting(
        {}, options=ModelConfig, help="keys of the model section that differ for the source stage, e.g. {drop_path: 0.1}")


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
    last_stride: int = setting(2, limit=Limit(1, 2),
                               help="the plain ResNet of the published pre-training (transformers have none)")
    bn_groups: int = setting(8, limit=AT_LEAST_ONE,
                             help="BN statistics per chunk of the batch; keys shuffled first (MoCo's shuffle BN)")
    sync_bn: bool = setting(False, help="under torchrun: SyncBatchNorm over the whole global batch (DINO's, for a "
                                        "backbone with BatchNorm); needs bn_groups 1")
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
    # DINO (Caron et al. 2021, as TransReID-SSL pre-trained its LUPerson ViTs): dim is the head's output size,
    # temperature the student's, key_momentum the teacher's EMA at the start (cosine to 1 over the run)
    local_crops: int = setting(8, limit=NON_NEGATIVE, help="DINO's small crops per image (half the image size)")
    local_crop_scale: list[float] = setting([0.05, 0.4], limit=UP_TO_ONE, check=_ascending_pair,
                                            expects=ASCENDING_PAIR, help="DINO: area share of the small crops")
    teacher_temperature: float = setting(0.04, limit=POSITIVE, help="DINO: sharpening of the teacher's output")
    center_momentum: float = setting(0.9, limit=FRACTION, help="DINO: EMA of the teacher's mean output (centring)")
    head_hidden: int = setting(2048, limit=AT_LEAST_ONE, help="DINO head: hidden width of its 3-layer MLP")
    head_bottleneck: int = setting(256, limit=AT_LEAST_ONE, help="DINO head: the L2-normalised bottleneck")
    freeze_last_layer: int = setting(1, limit=NON_NEGATIVE, help="DINO: epochs the head's last layer does not train")
    jitter_prob: float = setting(0.8, limit=PROBABILITY, help="DINO: colour jitter (0.4, 0.4, 0.2, 0.1) probability")
    solarize_prob: float = setting(0.2, limit=PROBABILITY, help="DINO: solarisation of the second global crop")
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
    tensorboard: bool = setting(True, help="also write TensorBoard event files (run folder's tensorboard/); "
                                           "metrics.jsonl stays the record")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    method_options: dict[str, Any] = setting({}, options="method",
                                             help="the options of adapt.method, checked against its Options")
    relations: ClassVar[tuple[Relation, ...]] = tuple(
        Relation(f"data.{side}", ("model.arch",), lambda size, arch: size % PATCH == 0 or not _is_transformer(arch),
                 f"a multiple of {PATCH}, the patch size of a transformer ({{keys[0]}} {{values[0]}})")
        for side in ("height", "width")
    )
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
