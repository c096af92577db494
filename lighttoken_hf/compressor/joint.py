"""Joint refinement: re-fit every stage together once all stages are trained.

Residual hashing trains stage ``s`` on what stages ``0..s-1`` leave over and then freezes it, so an
early stage never learns what the later ones can fix. Once every stage is trained the whole
reconstruction is linear in the stored floats given the codes::

    x_i ~ L_i R + sum_s [i in stage s] (b_s(i) W_s + c_s)  =  D_i Theta,   D_i = [L_i | b(i) | cover(i)]

(``L`` the fixed low-rank left factor, ``b(i)`` all of row ``i``'s code bits as +-1 with 0 for the
stages that skip it, ``cover(i)`` which stages cover it). :func:`refine_jointly` alternates two exact
block updates of the same weighted squared error:

1. ``Theta = [R; W_0; ...; c_0; ...]`` by one weighted ridge least-squares solve over every row;
2. every row's bits, all stages at once, by coordinate descent (:func:`~.hashing.refine_bits`).

Neither step can raise the error (up to the small ridge term), so the error falls monotonically; it
stops after ``iterations`` rounds or when no bit flips. The codes keep their stages, widths and rows,
so the stored format and byte count are those of the plain method. This is the block-coordinate
refinement used for additive and residual vector quantisers, applied to binary codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .hashing import refine_bits
from .resources import WIDE_BLOCK_SHARE, row_blocks


@dataclass
class JointFit:
    """Result of :func:`refine_jointly`: the low-rank right factor, every stage's decoder, the signs."""

    right: torch.Tensor
    decoder_weights: list[torch.Tensor]
    decoder_biases: list[torch.Tensor]
    signs: torch.Tensor
    stats: dict = field(default_factory=dict)


#: Columns of one tile of the Gram matrix's upper triangle (small tiles skip more of the lower triangle,
#: large ones multiply faster; at 2,000 columns 512 skips a third of the products).
_GRAM_TILE = 512

#: Cost of one multiply-add of a sparse-by-dense product relative to one of a dense product (CPU, measured
#: on a 1%-dense 8,192 x 1,792 flip matrix: about 15; taken twice for the sparse conversion and operands).
_SPARSE_COST = 30


def _normal_equations(
    signs: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``D^T W D`` and ``D^T W target`` (float64) for the design ``D = [signs | fixed]``.

    The weighted design ``sqrt(W) D`` is built and multiplied one row block at a time in float32 and
    summed in float64, so no (V x columns) design is ever formed.
    """
    columns = signs.shape[1] + fixed.shape[1]
    gram = torch.zeros(columns, columns, dtype=torch.float64, device=target.device)
    rhs = torch.zeros(columns, target.shape[1], dtype=torch.float64, device=target.device)
    at_most = int(WIDE_BLOCK_SHARE * target.numel())
    for rows in row_blocks(target.shape[0], max(columns, target.shape[1]), wide=True, at_most=at_most):
        root = weights[rows].sqrt().unsqueeze(1)
        design = torch.cat([signs[rows].float(), fixed[rows]], dim=1).mul_(root)  # sqrt(W) D: one temporary
        # the Gram matrix is symmetric: only the blocks on and above the diagonal are multiplied
        for a in range(0, columns, _GRAM_TILE):
            left = design[:, a : a + _GRAM_TILE].T
            tile = (left @ design[:, a:]).double()
            gram[a : a + _GRAM_TILE, a:] += tile
            gram[a + _GRAM_TILE :, a : a + _GRAM_TILE] += tile[:, _GRAM_TILE:].T
        rhs += (design.T @ (target[rows] * root)).double()
    return gram, rhs


def _solve(
    gram: torch.Tensor, rhs: torch.Tensor, ridge: float, free: int, total: float
) -> tuple[torch.Tensor, float]:
    """Weighted ridge least squares from the normal equations, and its weighted squared error.

    ``total`` is the target's weighted squared norm. The last ``free`` columns are not penalised. The
    error comes from the normal equations, so no (V x d) residual is formed.
    """
    scale = float(gram.diagonal().mean())
    reg = torch.full((gram.shape[0],), ridge * scale, dtype=gram.dtype, device=gram.device)
    if free:
        reg[-free:] = 1e-9 * scale  # only keeps an all-zero column (e.g. a zero factor) solvable
    theta = torch.linalg.solve(gram + torch.diag(reg), rhs)
    error = total - 2 * float((theta * rhs).sum()) + float((theta * (gram @ theta)).sum())
    return theta.float(), max(error, 0.0)


def refine_jointly(
    target: torch.Tensor,
    left: torch.Tensor,
    signs: torch.Tensor,
    stage_bits: list[int],
    covered: torch.Tensor,
    weights: torch.Tensor,
    *,
    iterations: int,
    ridge: float = 1e-3,
    progress=None,
) -> JointFit:
    """Alternate a joint least-squares fit of all decoders and a joint bit refinement.

    Args:
        target: (V, d) the rows to reconstruct (in the compressor's metric space).
        left: (V, k) the stored low-rank left factor (kept fixed; ``k`` may be 0).
        signs: (V, sum(stage_bits)) every stage's code bits as +-1, 0 where a stage skips the row (any
            signed dtype; int8 keeps it at a quarter of float32). Refined in place.
        stage_bits: the width of each stage, in the column order of ``signs``.
        covered: (V, stages) 1.0 where a stage covers the row, else 0.0.
        weights: (V,) per-row weights of the squared error (e.g. from token frequencies).
        iterations: rounds of (least squares, one bit sweep); a final least-squares fit follows.
        ridge: ridge strength relative to the mean diagonal of the Gram matrix, on the decoder
            weights only (not on the low-rank factor or the biases).
        progress: an optional tqdm-like bar over the rounds (``update`` per round).

    Returns:
        A :class:`JointFit` whose ``stats`` hold the weighted relative error and the bit flips of
        every round.
    """
    d = target.shape[1]
    k, total_bits, stages = left.shape[1], signs.shape[1], covered.shape[1]
    if sum(stage_bits) != total_bits or len(stage_bits) != stages:
        raise ValueError(
            f"stage_bits {stage_bits} do not match {total_bits} sign columns and {stages} stages"
        )
    x = target if target.dtype == torch.float32 else target.float()
    w = weights.float()
    # stages covering the same rows share one bias column (their biases are not separately identifiable)
    owners = [
        s for s in range(stages) if not any(torch.equal(covered[:, s], covered[:, t]) for t in range(s))
    ]
    fixed = torch.cat([left.float(), covered[:, owners].float()], dim=1)
    total = 0.0  # the target's weighted squared norm
    for rows in row_blocks(x.shape[0], d):
        total += float((w[rows].double() * (x[rows].double() ** 2).sum(1)).sum())
    norm = total or 1.0
    history: list[dict] = []
    gram, rhs = _normal_equations(signs, fixed, x, w)

    def update(rows: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        """Move the normal equations by the rows whose bits flipped (only the sign columns change).

        With ``N = O + Delta`` (new and old signs of these rows, ``W`` their weights),
        ``N'WN - O'WO = Delta'WN + (Delta'WO)'``: every product has the flips ``Delta`` on its left, so
        a sparse ``Delta`` (a sweep flips a few bits of each row it moves) costs O(flips x columns)
        instead of the O(rows x columns^2) of building the equations again.
        """
        row_w = w[rows].unsqueeze(1)
        change = new - old
        sparse = change.T.to_sparse() if 16 * int(torch.count_nonzero(change)) < change.numel() else None

        def product(dense: torch.Tensor) -> torch.Tensor:  # change' dense, sparse unless flips are dense
            return (change.T @ dense if sparse is None else torch.sparse.mm(sparse, dense)).double()

        gram[:total_bits, :total_bits] += product(new * row_w) + product(old * row_w).T
        cross = product(fixed[rows] * row_w)
        gram[:total_bits, total_bits:] += cross
        gram[total_bits:, :total_bits] += cross.T
        rhs[:total_bits] += product(x[rows] * row_w)

    def fit() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        theta, error = _solve(gram, rhs, ridge, free=k + len(owners), total=total)
        decoder, right = theta[:total_bits], theta[total_bits : total_bits + k]
        biases = torch.zeros(stages, d, device=theta.device)
        biases[owners] = theta[total_bits + k :]
        history.append({"weighted_rel_error": (error / norm) ** 0.5})
        return decoder, right, biases

    columns = total_bits + fixed.shape[1]
    rebuild_cost = x.shape[0] * columns * columns  # multiply-adds of building the equations again
    flips = None
    for _ in range(iterations):
        decoder, right, biases = fit()
        # the low-rank part and the biases stay as fitted while the bits move
        fixed_theta = torch.cat([right, biases[owners]])
        no_bias = torch.zeros(d, device=x.device)
        # move the equations by the flips when the last sweep's flips say that is cheaper than a rebuild
        incremental = flips is not None and flips * (2 * total_bits + fixed.shape[1] + d) * _SPARSE_COST < rebuild_cost
        signs, flips = refine_bits(
            signs, x, decoder, no_bias, 1, fixed=fixed, fixed_theta=fixed_theta,
            on_change=update if incremental else None,
        )  # fmt: skip
        if flips and not incremental:
            gram, rhs = _normal_equations(signs, fixed, x, w)
        history[-1]["flips"] = flips
        if progress is not None:
            progress.set_postfix(weighted_error=f"{history[-1]['weighted_rel_error']:.4f}", flips=flips, refresh=False)
            progress.update(1)
        if flips == 0:
            break
    decoder, right, biases = fit()
    bounds = torch.tensor([0, *stage_bits]).cumsum(0).tolist()
    return JointFit(
        right=right,
        decoder_weights=[decoder[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
        decoder_biases=list(biases),
        signs=signs,
        stats={"iterations": len(history) - 1, "history": history},
    )
