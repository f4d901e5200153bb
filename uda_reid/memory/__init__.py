"""Feature memories that methods train against: SpCL's hybrid memory, camera-aware proxies."""

from .camera_proxies import CameraProxies
from .hybrid import HybridMemory, class_centroids

__all__ = ["CameraProxies", "HybridMemory", "class_centroids"]
