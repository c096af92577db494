"""Low-rank part of LightToken: a rank-k truncated SVD of the embedding matrix."""

from __future__ import annotations

import torch

from .resources import row_blocks

#: Matrices with at most this many elements get an exact SVD; larger ones a randomized SVD.
EXACT_SVD_MAX_ELEMENTS = 4_000_000


def low_rank_factors(
    matrix: torch.Tensor,
    rank: int,
    *,
    seed: int = 0,
    exact: bool | None = None,
    oversample: int = 16,
    power_iterations: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return fp32 factors ``(left, right)`` with ``left @ right`` the best rank-``rank`` approximation.

    ``left = U_k S_k`` (V x k) and ``right = V_k^T`` (k x d). The exact SVD is used for small
    matrices (or when ``exact=True``); otherwise a seeded randomized SVD (Halko et al. 2011) with
    ``oversample`` extra columns and ``power_iterations`` subspace iterations; its products with the
    matrix run in float64 over row blocks, so it never holds a float64 copy of a large matrix.
    """
    v, d = matrix.shape
    if rank <= 0:
        return matrix.new_zeros(v, 0), matrix.new_zeros(0, d)
    if rank > min(v, d):
        raise ValueError(f"svd_rank={rank} exceeds min(V, d)={min(v, d)} of the {v} x {d} matrix")
    if exact if exact is not None else matrix.numel() <= EXACT_SVD_MAX_ELEMENTS or rank + oversample >= min(v, d):
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    else:
        gen = torch.Generator().manual_seed(seed)  # on the CPU: the same start on every device
        omega = torch.randn(d, rank + oversample, generator=gen, dtype=torch.float64).to(matrix.device)
        q, _ = torch.linalg.qr(_times(matrix, omega))
        for _ in range(power_iterations):
            q, _ = torch.linalg.qr(_transposed_times(matrix, q))
            q, _ = torch.linalg.qr(_times(matrix, q))
        ub, s, vh = torch.linalg.svd(_transposed_times(matrix, q).T, full_matrices=False)
        u = q @ ub
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    # Fix signs so that results do not depend on the LAPACK build: largest |entry| of each right vector > 0.
    signs = torch.sign(vh.gather(1, vh.abs().argmax(dim=1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1
    return (u * (s * signs)).float(), (vh * signs.unsqueeze(1)).float()


def _times(matrix: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``matrix @ other`` in float64, one row block of ``matrix`` at a time."""
    out = torch.empty(matrix.shape[0], other.shape[1], dtype=torch.float64, device=matrix.device)
    for rows in row_blocks(matrix.shape[0], matrix.shape[1]):
        out[rows] = matrix[rows].double() @ other
    return out


def _transposed_times(matrix: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``matrix.T @ other`` in float64, summed over row blocks of ``matrix``."""
    out = torch.zeros(matrix.shape[1], other.shape[1], dtype=torch.float64, device=matrix.device)
    for rows in row_blocks(matrix.shape[0], matrix.shape[1]):
        out += matrix[rows].double().T @ other[rows]
    return out
