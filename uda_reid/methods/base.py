"""What a method plugs into the cluster -> adapt loop, and the registry of methods.

The loop (``uda_reid.engine.loop``) owns data, optimisation, evaluation, checkpoints and logs; a
method only says how the model is prepared, what gets clustered, how pseudo-labels are refined
and which named losses one training step computes. A new method is one module with a subclass
registered in ``METHODS`` plus one recipe.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..clustering import ClusterResult
from ..config import RunConfig, update_dataclass
from ..data.datasets import Sample
from ..distributed import DistributedContext, unwrap_model
from ..registry import Registry

METHODS: Registry[type["Method"]] = Registry("method", "--method")


@dataclass
class AdaptContext:
    """What the loop hands a method: the model, the device, the samples and run settings.

    ``model`` is what training steps call (DDP-wrapped under torchrun); :attr:`unwrapped_model` is
    the model itself, for its attributes, feature extraction and state. ``dist`` is the process
    context: a trivial one in a single process, where all its collectives return their input.
    """

    config: RunConfig
    model: nn.Module
    device: torch.device
    target_samples: list[Sample]
    source_samples: list[Sample] | None  # None for USL
    num_source_classes: int
    progress: bool = True
    epoch: int = 0  # the epoch being prepared or trained, counted from 0
    dist: DistributedContext = dataclasses.field(default_factory=DistributedContext)

    @property
    def unwrapped_model(self) -> nn.Module:
        """The model inside the DDP wrapper (the model itself in a single process)."""
        return unwrap_model(self.model)


@dataclass
class EpochLabels:
    """A method's answer to a clustering: labels to train the target with, plus figures to log.

    ``labels[i]`` is the training class of target image ``i`` (−1 = not trained this epoch).
    ``scores`` are per-image values worth keeping (``N`` or ``N×P``, e.g. PPLR's agreement): the loop
    saves them with the labels in ``epochs/epoch_NNN.npz`` and plots their distribution per epoch.
    """

    labels: np.ndarray
    figures: dict[str, float] = dataclasses.field(default_factory=dict)
    scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    #: The feature spaces the method trains (``N×D`` each, e.g. PPLR's global + parts), on which
    #: add-ons build their state; None: the clustered features.
    spaces: list[torch.Tensor] | None = None


@dataclass
class StepOutput:
    """What one training step of a method computed.

    ``losses``: named loss tensors (summed by the loop). ``target_features``: the embedding of the
    target batch (``N×D``, with gradients; this process's slice under torchrun) that add-on terms
    act on, e.g. GDS with ``--gds``. ``figures``: other scalars worth logging per epoch (averaged
    like the losses, not trained on), e.g. the training accuracy.
    """

    losses: dict[str, torch.Tensor]
    target_features: torch.Tensor
    figures: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    #: The batch's features in each space of ``EpochLabels.spaces`` (``B×D``, with gradients; this
    #: process's slice); None: ``[target_features]``.
    batch_spaces: list[torch.Tensor] | None = None

    @property
    def spaces(self) -> list[torch.Tensor]:
        return self.batch_spaces if self.batch_spaces is not None else [self.target_features]


@dataclass
class NoOptions:
    """For methods without options: any key in ``method_options`` is then an error."""


class Method(abc.ABC):
    """Hooks the loop calls, in this order: prepare_model, setup, then every epoch
    target_features -> (clustering) -> on_clusters -> training_step/after_step × iterations.

    Under torchrun every process calls every hook. ``on_clusters`` must be deterministic (all
    ranks get the same clustering and must derive the same labels and state; the loop checks the
    labels). ``training_step`` sees this process's slice of the global batch: a mean of per-sample
    terms can stay on the slice (DDP averages gradients), a loss that couples the samples of a
    batch (batch-hard triplet, per-camera means) should be computed on ``ctx.dist.gather_batch``
    of its inputs, and state updated from a batch (memories) from the gathered batch, so it stays
    identical on every rank and equal to a single process's.
    """

    #: dataclass of the method's options (recipe section ``method_options``); checked strictly.
    Options: type = NoOptions
    #: How its batches are drawn (a rule of ``data.samplers.build_batch_sampler``; ``adapt.sampler``
    #: overrides it): the reference loaders of SpCL, cluster-contrast and PPLR by default.
    sampler: str = "multi_gallery"
    #: The config section with its epochs, iterations, evaluation period and BatchNorm settings.
    settings_section: str = "adapt"
    #: False: the training labels are the samples' own person ids (supervised training), nothing is clustered.
    clusters: bool = True
    #: Add-ons (``addons.ADD_ONS`` names) that must stay off because the method already is one.
    excludes_add_ons: tuple[str, ...] = ()
    #: Whether epoch 0 evaluates the initial model (the direct-transfer figure adaptation is measured against).
    evaluates_initial_model: bool = True
    #: Whether add-ons (``addons.ADD_ONS``) may be combined with it.
    accepts_add_ons: bool = True
    #: ``stage`` written into its checkpoints (``"pretrain"``: the exported model is a bare backbone).
    checkpoint_stage: str | None = None
    #: The name it is registered under (set by the registry).
    registered_name: str = ""
    #: Copies of the network's weights it keeps besides the trained one (a momentum encoder, a
    #: teacher): counted by the memory check before the first batch (engine.memory_check).
    weight_copies: int = 0

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.options = self.parse_options(config.method_options)

    @classmethod
    def parse_options(cls, values: Mapping[str, Any]) -> Any:
        return update_dataclass(cls.Options(), values, "method_options")

    @property
    def uses_source_batches(self) -> bool:
        """Whether every iteration also draws a labelled source batch (UDA end to end, as SpCL)."""
        return False

    def gradient_forwards_per_image(self) -> float:
        """Image-sized forward passes with gradients a step makes per batch image (what autograd keeps
        for the backward pass grows with it): 2 when a source batch comes with every target batch."""
        return 2.0 if self.uses_source_batches else 1.0

    @property
    def batch_size(self) -> int:
        """Images per global batch."""
        return self.config.data.batch_size

    @property
    def num_instances(self) -> int:
        """K: images per identity in a batch (what one pass over the identities is counted in)."""
        return self.config.data.num_instances

    def train_specs(self) -> list[str]:
        """The datasets whose train images it trains on (joined in this order)."""
        return [self.config.target]

    def evaluation_spec(self) -> str | None:
        """The dataset evaluated every ``eval_every`` epochs (None: no per-epoch evaluation)."""
        return self.config.target

    def check_samples(self, samples: list[Sample]) -> None:
        """Refuse training images it cannot train on (ConfigError), before any training."""

    def build_model(self, model_config: Any, num_classes: int, compute_dtype: torch.dtype | None) -> tuple[nn.Module, Any]:
        """The network to train and the report of its initial weights (None: random)."""
        from ..models.factory import build_model

        data = self.config.data
        return build_model(model_config, num_classes=num_classes, compute_dtype=compute_dtype,
                           image_size=(data.height, data.width))

    def train_transform(self) -> Any:
        """Image -> what a training batch holds under ``image``: uint8 pixels and an erasing rectangle,
        which the loop finishes on the device (normalise, erase: ``data.transforms.PixelFinish``)
        before the step sees a float32 batch."""
        from ..data.transforms import train_pixels

        return train_pixels(self.config.data)

    def evaluation_model(self, network: nn.Module) -> nn.Module:
        """The model whose features are evaluated (default: the trained network itself)."""
        return network

    def artifacts(self, network: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """Files (name -> state dict) written into the run folder after every epoch."""
        return {}

    def after_epoch(self, ctx: "AdaptContext") -> list[str]:
        """After an epoch's last step: e.g. bring state that ranks computed apart back in line.
        Returns lines for ``log.txt``."""
        return []

    def summary(self, run_dir: Any) -> dict[str, Any]:
        """Entries it adds to ``summary.json``."""
        return {}

    def ignored_settings(self) -> list[str]:
        """One line per setting of the run this method does not act on (the loop shows and logs them)."""
        return []

    def num_classes(self, samples: list[Sample]) -> int:
        """Size of the model's own classifier for these training samples (0: none; heads live in the method)."""
        return 0

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Change the model's structure before training (e.g. domain-specific BN). Default: as is."""
        return model

    def setup(self, ctx: AdaptContext, state: dict[str, Any] | None = None) -> None:
        """Build the method's state: from the initial model (e.g. fill a memory), or, when
        resuming, from ``state`` (what ``state_dict`` returned)."""

    def target_features(self, ctx: AdaptContext) -> torch.Tensor | None:
        """Features to cluster this epoch (``N×D``, the same on every rank); None lets the loop extract them."""
        return None

    def cluster_max_distance(self) -> float | str | None:
        """How much of the Jaccard distance the method needs kept (``"auto"``: what the clusterer reads)."""
        return "auto"

    @abc.abstractmethod
    def on_clusters(self, result: ClusterResult, features: torch.Tensor, ctx: AdaptContext) -> EpochLabels:
        """Turn the clustering of ``features`` (``N×D``, what was clustered) into this epoch's training
        labels, and set up memories and classifiers from them."""

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters the method re-creates in every ``on_clusters`` (classifiers initialised from
        cluster centroids). The loop trains them with the model's optimiser settings and a fresh
        optimiser state each epoch; under torchrun they are outside DDP and the loop averages
        their gradients over ranks."""
        return []

    @abc.abstractmethod
    def training_step(self, ctx: AdaptContext, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        """The losses of one step; ``batch`` has ``"target"`` (and ``"source"``) image batches.

        Target batches carry ``"label"`` (the epoch's training label) and ``"index"`` (the image's
        position in ``ctx.target_samples``); source batches carry ``"pid"``.
        """

    def before_optimizer_step(self, ctx: AdaptContext) -> None:
        """After the backward pass (gradients exchanged, clipped), before the optimiser uses them
        (DINO freezes its last layer here in its first epoch)."""

    def after_step(self, ctx: AdaptContext) -> None:
        """After ``optimizer.step()``: momentum updates of memories and the like."""

    def export_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights of a plain ``ReidModel`` for evaluation / ``--init`` (default: as is)."""
        return model.state_dict()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly (memories, thresholds...)."""
        return {}


def build_method(config: RunConfig) -> Method:
    """The method named by ``adapt.method`` (``--method``), with its options checked."""
    return METHODS.get(config.adapt.method)(config)
