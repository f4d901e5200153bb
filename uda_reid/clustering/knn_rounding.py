"""Rounding bounds that certify the exact kNN's bf16 candidate search (CPU and device paths).

A sample left out of a row's bf16 candidates has a bf16 product at most the row's smallest kept one
(the floor); its exact similarity exceeds that product by at most :func:`bf16_candidate_bound`, and
the float32 re-score of a kept neighbour is within :func:`float32_accumulation_bound` of its exact
value. A row whose k-th re-scored similarity is above floor + bound is certain. Written for numpy
arrays and torch tensors alike (the CPU path holds numpy, the device path tensors).
"""

from __future__ import annotations

FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# Half an ulp of a bf16 output: 2^-9 for |value| in [0.5, 1), 2^-8 in [1, 2) (unit vectors: |s| ≲ 1).
BF16_HALF_ULP_BELOW_ONE = 2.0**-9
# Floors at or above this may round in [1, 2): take the larger half-ulp there.
BF16_NEAR_ONE = 0.99


def float32_accumulation_bound(dim: int) -> float:
    """γ_D: |float32 sum of D products − exact| ≤ γ_D · Σ|x_d y_d| ≤ γ_D for unit vectors, in any order."""
    nu = dim * FLOAT32_UNIT_ROUNDOFF
    return nu / (1 - nu)


def bf16_candidate_bound(residual, floor, dim: int):
    """Per row: how far a left-out sample's exact similarity may exceed its bf16 product.

    ``residual``: per row ‖x − bf16(x)‖ (float64); ``floor``: per row the smallest kept bf16 product.
    The inputs' rounding contributes ‖r_i‖ + ‖r_j‖ + ‖r_i‖‖r_j‖ (Cauchy-Schwarz, r_j at most the
    largest residual), the float32 accumulation γ_D of the rounded inputs' norms, the bf16 output half
    an ulp, and the float32 re-score of the k-th neighbour another γ_D.
    """
    residual = residual * (1 + 1e-6)  # the norms themselves were computed in floating point
    largest = residual.max()
    gamma = float32_accumulation_bound(dim)
    output_rounding = BF16_HALF_ULP_BELOW_ONE * (1 + (floor >= BF16_NEAR_ONE))
    return (residual + largest + residual * largest + gamma * (1 + residual) * (1 + largest)
            + output_rounding + gamma)
