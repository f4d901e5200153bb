"""BatchNorm variants SpCL's published numbers depend on: domain-specific copies and grouped statistics.

* Domain-specific BN (DSBN): every BatchNorm gets a ``source`` and a ``target`` copy (same initial
  weights and statistics), so source and target images are normalised with their own statistics while
  all convolutions are shared. The copy in use is chosen on the whole model with :func:`set_bn_domain`
  or the :func:`bn_domain` context manager; the default, and the one evaluation uses, is ``target``.
* Grouped statistics (``bn_groups``): the published runs used 4 GPUs with DataParallel, so each
  BatchNorm normalised a quarter of the batch with that quarter's statistics. :func:`convert_to_grouped_bn`
  reproduces this on one device (train mode): the batch is cut into ``bn_groups`` contiguous equal
  chunks, each normalised with its own mean and variance. Only chunk 0 updates the running statistics,
  because DataParallel keeps replica 0's buffers and discards the other replicas' updates.

Both conversions return a converted copy (the input model is not modified) and compose in either order
(a DSBN layer whose two copies are grouped). Parameters and state-dict keys of the BatchNorms are kept,
so a plain checkpoint loads into a grouped model and the BN neck's bias stays frozen at zero.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError
from .necks import BNNeck

DOMAINS = ("source", "target")
_BN_STATE_NAMES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"BatchNorm domain must be one of {', '.join(DOMAINS)}; got {domain!r}")
    return domain


class DomainSpecificBatchNorm(nn.Module):
    """Two copies of one BatchNorm, ``source`` and ``target``; ``domain`` says which one ``forward`` uses.

    State-dict keys are ``<layer>.source.weight`` / ``<layer>.target.weight`` etc. The copies are deep
    copies of the original layer, so a :class:`BNNeck` stays a BNNeck (bias frozen at zero).
    """

    def __init__(self, batchnorm: _BatchNorm) -> None:
        super().__init__()
        self.source = copy.deepcopy(batchnorm)
        self.target = copy.deepcopy(batchnorm)
        self.domain = "target"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.source(inputs) if self.domain == "source" else self.target(inputs)

    def extra_repr(self) -> str:
        return f"domain={self.domain}"


def _replace_batchnorms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm):
            setattr(module, name, DomainSpecificBatchNorm(child))
        elif not isinstance(child, DomainSpecificBatchNorm):
            _replace_batchnorms(child)


def convert_to_domain_specific_bn(model: nn.Module) -> nn.Module:
    """Copy of ``model`` with every BatchNorm (1d, 2d, BN neck, grouped) split into source/target copies.

    Layers that are already domain-specific are left as they are. The new model's domain is ``target``.
    Build the optimiser after converting: the copies are new parameters.
    """
    if isinstance(model, _BatchNorm):
        return DomainSpecificBatchNorm(model)
    converted = copy.deepcopy(model)
    _replace_batchnorms(converted)
    return converted


def set_bn_domain(model: nn.Module, domain: str) -> int:
    """Make every domain-specific BatchNorm of ``model`` use ``domain``; returns how many layers were set."""
    _check_domain(domain)
    layers = [module for module in model.modules() if isinstance(module, DomainSpecificBatchNorm)]
    for layer in layers:
        layer.domain = domain
    return len(layers)


@contextlib.contextmanager
def bn_domain(model: nn.Module, domain: str) -> Iterator[nn.Module]:
    """``with bn_domain(model, "source"): model(source_images)`` — restores each layer's domain afterwards."""
    _check_domain(domain)
    layers = [module for module in model.modules() if isinstance(module, DomainSpecificBatchNorm)]
    previous = [layer.domain for layer in layers]
    for layer in layers:
        layer.domain = domain
    try:
        yield model
    finally:
        for layer, old in zip(layers, previous):
            layer.domain = old


def domain_specific_to_plain(
    state_dict: Mapping[str, torch.Tensor], domain: str = "target"
) -> OrderedDict[str, torch.Tensor]:
    """Map a DSBN model's state dict to the plain model's keys, keeping the ``domain`` copy.

    ``neck.target.weight`` -> ``neck.weight`` and ``neck.source.*`` dropped (for ``domain="target"``),
    so an adapted model loads into a plain :class:`ReidModel` for evaluation or export. A key is treated
    as a DSBN entry only when its counterpart of the other domain exists too; every other key is copied
    unchanged. The input mapping is not modified (tensors are shared, not cloned).
    """
    other = "source" if _check_domain(domain) == "target" else "target"
    plain: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in DOMAINS and parts[-1] in _BN_STATE_NAMES:
            counterpart = ".".join(parts[:-2] + [other if parts[-2] == domain else domain, parts[-1]])
            if counterpart in state_dict:
                if parts[-2] == domain:
                    plain[".".join(parts[:-2] + parts[-1:])] = value
                continue
        plain[key] = value
    return plain


class _GroupedStatistics(_BatchNorm):
    """Mixin over a BatchNorm class: in train mode, normalise ``bn_groups`` contiguous chunks separately.

    Chunk 0 goes through the layer's own ``forward`` (normalised with its statistics, which also update
    the running mean/variance and ``num_batches_tracked``: DataParallel replica 0). The other chunks
    are normalised with their own batch statistics and leave the buffers alone (the discarded replicas).
    """

    bn_groups: int = 1

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        uses_batch_statistics = self.training or self.running_mean is None
        if self.bn_groups == 1 or not uses_batch_statistics:
            return super().forward(inputs)
        batch_size = inputs.shape[0]
        if batch_size % self.bn_groups:
            raise ConfigError(
                f"bn_groups={self.bn_groups} must divide the batch size, but a batch of {batch_size} samples "
                f"reached a BatchNorm layer ({self.num_features} features); use a batch size that is a multiple "
                "of bn_groups (and drop incomplete last batches while training)"
            )
        first, *others = inputs.chunk(self.bn_groups)
        outputs = [super().forward(first)]
        for chunk in others:
            outputs.append(F.batch_norm(chunk, None, None, self.weight, self.bias, training=True, eps=self.eps))
        return torch.cat(outputs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_groups={self.bn_groups}"


class GroupedBatchNorm1d(_GroupedStatistics, nn.BatchNorm1d):
    """BatchNorm1d with grouped batch statistics (see :func:`convert_to_grouped_bn`)."""


class GroupedBatchNorm2d(_GroupedStatistics, nn.BatchNorm2d):
    """BatchNorm2d with grouped batch statistics (see :func:`convert_to_grouped_bn`)."""


class GroupedBNNeck(_GroupedStatistics, BNNeck):
    """BN neck (frozen zero bias) with grouped batch statistics (see :func:`convert_to_grouped_bn`)."""


_GROUPED_CLASSES: dict[type, type] = {
    nn.BatchNorm1d: GroupedBatchNorm1d,
    nn.BatchNorm2d: GroupedBatchNorm2d,
    BNNeck: GroupedBNNeck,
}


def convert_to_grouped_bn(model: nn.Module, groups: int) -> nn.Module:
    """Copy of ``model`` whose BatchNorms compute train-mode statistics over ``groups`` chunks of the batch.

    The recipe's ``bn_groups``: 4 reproduces the published 4-GPU runs on one device (a batch of 64
    is normalised as four batches of 16). Eval mode is unchanged (running statistics). Parameters,
    buffers, ``requires_grad`` flags and state-dict keys are kept: each layer only changes class
    (BatchNorm1d/2d/BNNeck -> its grouped twin; an already grouped layer gets the new ``groups``).
    Domain-specific layers are converted inside (both copies grouped). ``groups=1`` is plain BN.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ConfigError(f"bn_groups must be a positive integer (1 = plain BatchNorm), got {groups!r}")
    converted = copy.deepcopy(model)
    grouped_classes = set(_GROUPED_CLASSES.values())
    for module in converted.modules():
        if not isinstance(module, _BatchNorm):
            continue
        if type(module) not in grouped_classes:
            if type(module) not in _GROUPED_CLASSES:
                raise TypeError(
                    f"bn_groups supports BatchNorm1d, BatchNorm2d and BNNeck layers; found {type(module).__name__}"
                )
            module.__class__ = _GROUPED_CLASSES[type(module)]  # same attributes, grouped forward
        module.bn_groups = groups
    return converted
