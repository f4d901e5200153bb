"""Feature memories that methods train against: SpCL's hybrid memory, camera-aware proxies."""

from .camera_proxies import CameraAwareProxies, CameraProxies
from ..centroids import class_centroids
from .hybrid import HybridMemory

__all__ = ["CameraAwareProxies", "CameraProxies", "HybridMemory", "class_centroids"]
