"""uda_reid: unsupervised person re-identification (UDA and USL) with a cluster -> adapt loop."""

__version__ = "0.2.0"
