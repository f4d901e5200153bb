"""The configurations the training loop runs besides the one the user wrote: supervised training
(``udareid train``) and the supervised source stage of a UDA run, both as the method ``supervised``."""

from __future__ import annotations

import dataclasses

from ..config import RunConfig, update_dataclass


def supervised_config(config: RunConfig) -> RunConfig:
    """``config`` as a supervised run on ``config.dataset`` (``udareid train``): the method
    ``supervised`` with the ``train`` settings, evaluated on the same dataset."""
    return dataclasses.replace(
        config,
        source=None,
        target=config.dataset,
        adapt=dataclasses.replace(config.adapt, method="supervised", sampler="auto", source_pretrain_epochs=0),
        method_options={},
    )


def source_stage_config(config: RunConfig) -> RunConfig:
    """The supervised source stage of a UDA run: ``train`` settings on the source, ``optim`` with
    ``adapt.source_optim`` (the loop runs it without add-ons)."""
    return supervised_config(dataclasses.replace(
        config,
        dataset=config.source,
        eval_datasets=[],
        optim=update_dataclass(config.optim, config.adapt.source_optim, "adapt.source_optim"),
        train=dataclasses.replace(config.train, epochs=config.adapt.source_pretrain_epochs),
    ))
