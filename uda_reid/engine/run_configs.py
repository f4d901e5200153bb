"""The configurations the training loop runs besides the one the user wrote: supervised training
(``udareid train``) and the supervised source stage of a UDA run, both as the method ``supervised``."""

from __future__ import annotations

import dataclasses

from ..config import RunConfig, update_dataclass
from ..errors import ConfigError


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
    """The supervised source stage of a UDA run: ``train`` settings on the source, ``optim``, ``data`` and
    ``model`` with ``adapt.source_optim``, ``source_data`` and ``source_model`` (the loop runs it without
    add-ons)."""
    adapt = config.adapt
    layout = sorted(set(adapt.source_model) - {"drop_path"})
    if layout:  # the adaptation starts from the source stage's weights: they must fit its model
        raise ConfigError(f"adapt.source_model: {', '.join(layout)} would give the source stage another network than "
                          f"the adaptation; only drop_path may differ")
    return supervised_config(dataclasses.replace(
        config,
        dataset=config.source,
        eval_datasets=[],
        optim=update_dataclass(config.optim, adapt.source_optim, "adapt.source_optim"),
        data=update_dataclass(config.data, adapt.source_data, "adapt.source_data"),
        model=update_dataclass(config.model, adapt.source_model, "adapt.source_model"),
        train=dataclasses.replace(config.train, epochs=config.adapt.source_pretrain_epochs),
    ))
