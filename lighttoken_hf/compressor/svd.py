"""Low-rank part of LightToken: a rank-k truncated SVD of the embedding matrix."""

from __future__ import annotations

import torch

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
    ``oversample`` extra columns and ``power_iterations`` subspace iterations.
    """
    v, d = matrix.shape
    if rank <= 0:
        return matrix.new_zeros(v, 0), matrix.new_zeros(0, d)
    if rank > min(v, d):
        raise ValueError(f"svd_rank={rank} exceeds min(V, d)={min(v, d)} of the {v} x {d} matrix")
    a = matrix.double()
    if exact if exact is not None else a.numel() <= EXACT_SVD_MAX_ELEMENTS or rank + oversample >= min(v, d):
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
    else:
        gen = torch.Generator().manual_seed(seed)
        omega = torch.randn(d, rank + oversample, generator=gen, dtype=a.dtype)
        q, _ = torch.linalg.qr(a @ omega)
        for _ in range(power_iterations):
            q, _ = torch.linalg.qr(a.T @ q)
            q, _ = torch.linalg.qr(a @ q)
        ub, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
        u = q @ ub
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    # Fix signs so that results do not depend on the LAPACK build: largest |entry| of each right vector > 0.
    signs = torch.sign(vh.gather(1, vh.abs().argmax(dim=1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1
    return (u * (s * signs)).float(), (vh * signs.unsqueeze(1)).float()
