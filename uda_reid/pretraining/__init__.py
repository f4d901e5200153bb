"""Self-supervised pre-training methods (``udareid pretrain``); importing this package registers them.

A method is an ``nn.Module`` holding its encoders and queues whose ``forward(views)`` returns the
step's losses; ``PRETRAINERS`` maps ``pretrain.method`` to it. A new one is one file here.
"""

import importlib
import pkgutil

from .moco import PRETRAINERS, MoCo

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PRETRAINERS", "MoCo"]
