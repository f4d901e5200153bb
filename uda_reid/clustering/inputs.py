"""Validation of the feature matrices that enter the clustering stage.

Every public entry point of the stage (``cluster_stage``, ``jaccard_distance``, ``knn_search``, the
kNN backends, the feature clusterers, re-ranking) starts from the same checks, so a user whose
extractor produced NaNs, an empty split or a 3-D tensor gets one clear error naming the rows or the
shape, instead of a faiss crash or silently wrong pseudo-labels.

The checks and the L2 normalisation run once per call, however many steps the features pass
through: the entry point calls :func:`unit_features`, and hands the :class:`UnitFeatures` it returns
to the inner steps, which take it as it is (a second :func:`unit_features` on it does nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, UdaReidError

FeatureArray = np.ndarray | torch.Tensor


class InvalidFeaturesError(UdaReidError, ValueError):
    """Features cannot be clustered as given (dtype, shape, NaN/inf or zero rows, too few samples)."""


class InvalidParameterError(ConfigError, ValueError):
    """An option of the clustering stage (k1, k2, max_distance, eps, ...) is out of its range."""


class InvalidDistanceError(UdaReidError, ValueError):
    """A distance matrix given to a clusterer is not square, not finite or out of range."""


def _describe_rows(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f", ... ({len(rows) - limit} more)" if len(rows) > limit else ""
    return f"{len(rows)} row(s): {shown}{more}"


def as_float32_features(features: FeatureArray, *, name: str = "features") -> torch.Tensor:
    """Return an N×D float32 torch tensor view/copy of ``features`` after checking it.

    Accepts numpy arrays and torch tensors (any device) of a floating dtype; float16/float64 are
    converted to float32. The input object is never modified (a copy is made when the dtype changes;
    callers must not write into the result).
    """
    if isinstance(features, np.ndarray):
        if not np.issubdtype(features.dtype, np.floating):
            raise InvalidFeaturesError(
                f"{name} must be a floating-point N×D array; received dtype {features.dtype}"
            )
        if features.dtype == np.float16:
            features = features.astype(np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(features))
    elif isinstance(features, torch.Tensor):
        if not torch.is_floating_point(features):
            raise InvalidFeaturesError(
                f"{name} must be a floating-point N×D tensor; received dtype {features.dtype}"
            )
        tensor = features.detach()
    else:
        raise InvalidFeaturesError(
            f"{name} must be a numpy array or torch tensor of shape N×D; "
            f"received {type(features).__name__}"
        )
    if tensor.dim() != 2:
        raise InvalidFeaturesError(
            f"{name} must be 2-D (N samples × D dims); received shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InvalidFeaturesError(
            f"{name} is empty: received shape {tuple(tensor.shape)}, expected N ≥ 1 rows and D ≥ 1 dims"
        )
    tensor = tensor.to(torch.float32).contiguous()
    # A row sum is finite unless the row holds NaN/inf (or overflows): check those rows exactly.
    # (torch.isfinite on the whole matrix would allocate ~1.6× the features.)
    suspect = torch.nonzero(~torch.isfinite(tensor.sum(dim=1))).flatten()
    if len(suspect):
        bad = suspect[~torch.isfinite(tensor[suspect]).all(dim=1)].cpu().numpy()
        if len(bad):
            raise InvalidFeaturesError(f"{name} contain NaN or inf values in {_describe_rows(bad)}")
    return tensor


def l2_normalised(features: FeatureArray, *, name: str = "features") -> torch.Tensor:
    """Checked N×D float32 tensor of ``features`` with unit-length rows (the cosine geometry of §1).

    Rows already of unit length (within 1e-6, e.g. the output of this function) are returned
    without a copy, so passing normalised features down the stage costs no memory. Rows of zero
    length cannot be normalised and are reported by index.
    """
    tensor = as_float32_features(features, name=name)
    norms = torch.linalg.vector_norm(tensor, dim=1)
    if not bool(torch.isfinite(norms).all()):
        bad = torch.nonzero(~torch.isfinite(norms)).flatten().cpu().numpy()
        raise InvalidFeaturesError(f"{name} have values too large to normalise in float32 in {_describe_rows(bad)}")
    zero = norms == 0
    if bool(zero.any()):
        bad = torch.nonzero(zero).flatten().cpu().numpy()
        raise InvalidFeaturesError(f"{name} have zero length (cannot be L2-normalised) in {_describe_rows(bad)}")
    if bool(((norms - 1).abs() <= 1e-6).all()):
        return tensor
    return tensor / norms[:, None]


@dataclass(frozen=True, eq=False)
class UnitFeatures:
    """Features that passed the checks of the stage: ``tensor`` is an N×D float32 contiguous torch
    tensor (on the input's device) of finite rows of unit length.

    Made by :func:`unit_features`; every function of the stage that takes features also takes this
    and then skips the checks. Do not write into ``tensor`` (it may share memory with the input).
    """

    tensor: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def numpy(self) -> np.ndarray:
        """The rows as a C-contiguous float32 numpy array: a view on the CPU, a host copy from a GPU."""
        return np.ascontiguousarray(self.tensor.cpu().numpy())


def unit_features(features: FeatureArray | UnitFeatures, *, name: str = "features") -> UnitFeatures:
    """The entry check of the clustering stage: ``features`` validated and L2-normalised, once.

    Raw features (numpy or torch, any device, not modified) go through :func:`l2_normalised` and
    raise its one-line errors; :class:`UnitFeatures` from an earlier call come back as they are.
    """
    if isinstance(features, UnitFeatures):
        return features
    return UnitFeatures(l2_normalised(features, name=name))


def check_neighbor_count(num_samples: int, k: int, *, option: str) -> None:
    """Self-kNN with k neighbours (self included) needs more than k samples."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidParameterError(f"{option} must be an integer ≥ 1; received {k!r}")
    if num_samples <= k:
        raise InvalidFeaturesError(
            f"{option}={k} needs more than {k} samples; received N={num_samples} "
            f"(lower {option} or cluster more samples)"
        )
