"""Methods plug into the cluster -> adapt loop; importing this package registers the built-in ones."""

from . import spcl  # noqa: F401  (registers "spcl")
from .base import METHODS, AdaptContext, EpochLabels, Method, build_method

__all__ = ["METHODS", "AdaptContext", "EpochLabels", "Method", "build_method"]
