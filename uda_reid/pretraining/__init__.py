"""Self-supervised pre-training methods (``udareid pretrain``); importing this package registers them.

A pre-training method is a ``Method`` with the defaults of :class:`~.base.PretrainingMethod`, run by
the same training loop as every other training; ``PRETRAINERS`` maps ``pretrain.method`` to it. A new
one is one file here.
"""

import importlib
import pkgutil

from .base import BACKBONE_FILE, PRETRAINERS, PretrainingMethod

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BACKBONE_FILE", "PRETRAINERS", "PretrainingMethod"]
