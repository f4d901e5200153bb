"""Methods plug into the cluster -> adapt loop; importing this package registers the built-in ones."""

from . import baseline, pplr, spcl  # noqa: F401  (register "baseline", "pplr", "spcl")
from .base import METHODS, AdaptContext, EpochLabels, Method, StepOutput, build_method

__all__ = ["METHODS", "AdaptContext", "EpochLabels", "Method", "StepOutput", "build_method"]
