"""Feature memories that methods train against (SpCL's hybrid memory)."""

from .hybrid import HybridMemory, class_centroids

__all__ = ["HybridMemory", "class_centroids"]
