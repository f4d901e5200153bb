"""Procedural synthetic people in two visibly different domains, written as Market-1501 folders.

No real re-ID dataset can be downloaded everywhere, so the toolkit ships a generator that lets
the whole pipeline (supervised source training, UDA synthx -> synthm, USL) run end to end on a
laptop CPU:

- ``synthx`` (PersonX-like): clean studio renders, uniform light, sharp, few occluders.
- ``synthm`` (Market-like): per-camera colour casts and brightness, cluttered street scenes,
  blur and low resolution, JPEG artefacts, more occluders.

Typical use: ``ensure_domain(data_root, "synthm")`` (generate once, then reuse), or
``generate_domain(..., overwrite=True)`` to force, and ``save_montage`` to look at the result.
"""

from .appearance import VIEWPOINTS, Identity, Occluder, View, sample_identity, sample_occluder, sample_view
from .cameras import CameraLook, build_camera
from .domains import DOMAINS, DomainSpec, DomainStyle, resolve_spec
from .generate import (
    GENERATOR_VERSION,
    MANIFEST_NAME,
    PlannedImage,
    build_cameras,
    ensure_domain,
    generate_domain,
    identity_of,
    plan_domain,
    read_manifest,
)
from .montage import save_montage
from .render import draw_person, render_person

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "VIEWPOINTS",
    "CameraLook",
    "DomainSpec",
    "DomainStyle",
    "Identity",
    "Occluder",
    "PlannedImage",
    "View",
    "build_camera",
    "build_cameras",
    "draw_person",
    "ensure_domain",
    "generate_domain",
    "identity_of",
    "plan_domain",
    "read_manifest",
    "render_person",
    "resolve_spec",
    "sample_identity",
    "sample_occluder",
    "sample_view",
    "save_montage",
]
