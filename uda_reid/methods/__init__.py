"""Methods plug into the cluster -> adapt loop; importing this package registers every method.

Each module of this package that defines a method registers it in ``METHODS`` where it is defined;
the package imports all its modules, so a new method is one new file here (plus its recipe).
"""

import importlib
import pkgutil

from .base import METHODS, AdaptContext, EpochLabels, Method, StepOutput, build_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "AdaptContext", "EpochLabels", "Method", "StepOutput", "build_method"]
