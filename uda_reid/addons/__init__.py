"""Add-ons: terms that combine with any method (GDS, camera-aware proxies); importing this package
registers every add-on.

Each module of this package that defines an add-on registers it in ``ADD_ONS`` where it is
defined; the package imports all its modules, so a new add-on is one new file here.
"""

import importlib
import pkgutil

from .base import ADD_ONS, AddOn, build_add_ons

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ADD_ONS", "AddOn", "build_add_ons"]
