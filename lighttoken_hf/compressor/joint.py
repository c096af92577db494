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

from ..core.lighttoken_codec import pack_bits, unpack_bits
from .hashing import refine_bits
from .least_squares import GRAM_TILE, normal_equations, solve_ridge
from .resources import row_blocks


class PackedSigns:
    """Every row's bits of every stage at one bit each, read and written as int8 signs by rows.

    Reads like the (V x sum(B)) int8 matrix of :func:`refine_jointly`: ``signs[rows]`` gives each
    stage's bits as +-1 where the stage covers the row and 0 where it does not (followed by one 1/0
    coverage flag per stage for a :meth:`with_coverage` view, the design of the decoders' biases);
    ``signs[rows] = block`` stores the signs of the bit columns. An eighth of the int8 matrix, so the
    stored codes of a small matrix coded with many bits (8x) no longer outweigh the matrix itself.
    """

    dtype = torch.int8

    def __init__(
        self,
        packed: list[torch.Tensor],
        stage_bits: list[int],
        covered: torch.Tensor,
        coverage_columns: bool = False,
    ) -> None:
        """``packed[s]``: (V, ceil(B_s / 8)) uint8 bits of stage ``s`` (as :func:`pack_bits` stores them, any
        value where the stage skips the row); ``covered``: (V, stages) 1.0 where a stage covers the row."""
        self.packed, self.stage_bits, self.covered = packed, list(stage_bits), covered
        self.coverage_columns = coverage_columns
        self.shape = (covered.shape[0], sum(stage_bits) + (covered.shape[1] if coverage_columns else 0))
        self.full = [bool(covered[:, s].all()) for s in range(covered.shape[1])]  # stages over every row
        byte = torch.arange(256, dtype=torch.uint8, device=covered.device).unsqueeze(1)
        self.table = unpack_bits(byte, 8).to(torch.int8) * 2 - 1  # (256, 8): each byte's bits as +-1

    def with_coverage(self) -> PackedSigns:
        """The same bits (shared storage) with the coverage flags as extra columns."""
        return PackedSigns(self.packed, self.stage_bits, self.covered, coverage_columns=True)

    def __getitem__(self, rows: slice | torch.Tensor) -> torch.Tensor:
        covered = self.covered[rows].to(torch.int8)
        n = covered.shape[0]
        out = torch.empty(n, self.shape[1], dtype=torch.int8, device=covered.device)
        start = 0
        for s, (packed, bits) in enumerate(zip(self.packed, self.stage_bits)):
            block = packed[rows]  # one table lookup per byte gives its 8 signs
            signs = self.table.index_select(0, block.reshape(-1).int()).view(n, -1)[:, :bits]
            part = out[:, start : start + bits]
            if self.full[s]:
                part.copy_(signs)
            else:
                torch.mul(signs, covered[:, s : s + 1], out=part)
            start += bits
        if self.coverage_columns:
            out[:, start:] = covered
        return out

    def __setitem__(self, rows: slice | torch.Tensor, block: torch.Tensor) -> None:
        start = 0
        for packed, bits in zip(self.packed, self.stage_bits):
            packed[rows] = pack_bits(block[:, start : start + bits] > 0)
            start += bits


@dataclass
class JointFit:
    """Result of :func:`refine_jointly`: the low-rank right factor, every stage's decoder, the signs."""

    right: torch.Tensor
    decoder_weights: list[torch.Tensor]
    decoder_biases: list[torch.Tensor]
    signs: torch.Tensor | PackedSigns
    stats: dict = field(default_factory=dict)


#: Cost of one multiply-add of a sparse-by-dense product relative to one of a dense product (CPU, measured
#: on a 1%-dense 8,192 x 1,792 flip matrix: about 15; taken twice for the sparse conversion and operands).
_SPARSE_COST = 30


def refine_jointly(
    target: torch.Tensor,
    left: torch.Tensor,
    signs: torch.Tensor | PackedSigns,
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
            signed dtype, or :class:`PackedSigns` at one bit each). Refined in place.
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
    gram, rhs = normal_equations(signs, fixed, x, w, gram_dtype=torch.float32)

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
            return change.T @ dense if sparse is None else torch.sparse.mm(sparse, dense)

        # each float32 product is added into the equations in place, a tile of columns at a time
        # (a whole bits x bits product would be a temporary half the size of the equations)
        new.mul_(row_w)
        old.mul_(row_w)
        for a in range(0, total_bits, GRAM_TILE):
            b = min(total_bits, a + GRAM_TILE)
            gram[:total_bits, a:b] += product(new[:, a:b])
            gram[a:b, :total_bits] += product(old[:, a:b]).T
        cross = product(fixed[rows] * row_w)
        gram[:total_bits, total_bits:] += cross
        gram[total_bits:, :total_bits] += cross.T
        del cross
        rhs[:total_bits] += product(x[rows] * row_w)

    def fit() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        theta, error = solve_ridge(gram, rhs, ridge, free=k + len(owners), total=total)
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
        incremental = (
            flips is not None and flips * (2 * total_bits + fixed.shape[1] + d) * _SPARSE_COST < rebuild_cost
        )
        signs, flips = refine_bits(
            signs, x, decoder, no_bias, 1, fixed=fixed, fixed_theta=fixed_theta,
            on_change=update if incremental else None,
        )  # fmt: skip
        if flips and not incremental:
            del gram, rhs  # the old equations go before the new ones are built
            gram, rhs = normal_equations(signs, fixed, x, w, gram_dtype=torch.float32)
        history[-1]["flips"] = flips
        if progress is not None:
            progress.set_postfix(
                weighted_error=f"{history[-1]['weighted_rel_error']:.4f}", flips=flips, refresh=False
            )
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
