"""Weighted ridge least squares over a design of code signs and a few dense columns, in row blocks.

A stage's decoder (``target ~ signs W + b``) and the joint refit of every stage
(``target ~ [signs | fixed] Theta``) are the same problem: build the normal equations ``D'WD`` and
``D'W target`` one row block at a time (no V x columns design is ever formed) and solve them.
"""

from __future__ import annotations

import torch

from .resources import WIDE_BLOCK_SHARE, row_blocks

#: Columns of one tile of the Gram matrix's upper triangle (small tiles skip more of the lower triangle,
#: large ones multiply faster; at 2,000 columns 512 skips a third of the products).
GRAM_TILE = 512


def normal_equations(
    signs: torch.Tensor,
    fixed: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    gram_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``D^T W D`` (``gram_dtype``) and ``D^T W target`` (float64) for the design ``D = [signs | fixed]``.

    ``signs`` is (n x B) in any dtype (+-1, 0 for a bit a row does not have), ``fixed`` (n x f) float and
    ``weights`` (n,) the rows' weights. The weighted design ``sqrt(W) D`` is built and multiplied one row
    block at a time in float32 (signs times a root weight are exact) and summed in ``gram_dtype``: float32
    halves a large Gram matrix (the joint refit holds one of (sum of bits)^2 entries) and loses only the
    rounding of a few block sums, each product being float32 already.
    """
    columns = signs.shape[1] + fixed.shape[1]
    gram = torch.zeros(columns, columns, dtype=gram_dtype, device=target.device)
    rhs = torch.zeros(columns, target.shape[1], dtype=torch.float64, device=target.device)
    at_most = int(WIDE_BLOCK_SHARE * target.numel())
    for rows in row_blocks(target.shape[0], max(columns, target.shape[1]), wide=True, at_most=at_most):
        root = weights[rows].float().sqrt().unsqueeze(1)
        design = torch.cat([signs[rows].float(), fixed[rows].float()], dim=1).mul_(root)  # one temporary
        # the Gram matrix is symmetric: only the blocks on and above the diagonal are multiplied
        for a in range(0, columns, GRAM_TILE):
            tile = design[:, a : a + GRAM_TILE].T @ design[:, a:]
            gram[a : a + GRAM_TILE, a:] += tile
            gram[a + GRAM_TILE :, a : a + GRAM_TILE] += tile[:, GRAM_TILE:].T
            del tile
        rhs += design.T @ (target[rows].float() * root)
    return gram, rhs


def solve_ridge(
    gram: torch.Tensor, rhs: torch.Tensor, ridge: float, free: int, total: float = 0.0
) -> tuple[torch.Tensor, float]:
    """Weighted ridge least squares from the normal equations, and its weighted squared error.

    The ridge is ``ridge`` times the mean diagonal of ``gram``, on every column but the last ``free``
    (biases, fixed factors). ``total`` is the target's weighted squared norm (the error is
    ``total - 2 theta'rhs + theta'G theta``, so no residual is formed). ``gram`` is left as it was; the
    system is solved in float64 whatever its dtype. Returns ``theta`` as float32.
    """
    # a float64 gram is changed in place and restored (no second columns x columns matrix); another is copied
    system = gram if gram.dtype == torch.float64 else gram.double()
    rhs = rhs.double()
    diagonal = system.diagonal()
    scale = float(diagonal.mean())
    reg = torch.full((system.shape[0],), ridge * scale, dtype=system.dtype, device=system.device)
    if free:
        reg[system.shape[0] - free :] = (
            1e-9 * scale
        )  # only keeps an all-zero column (e.g. a zero factor) solvable
    diagonal += reg
    try:
        theta = torch.linalg.solve(system, rhs)
    finally:
        diagonal -= reg
    error = total - 2 * float((theta * rhs).sum()) + float((theta * (system @ theta)).sum())
    return theta.float(), max(error, 0.0)
