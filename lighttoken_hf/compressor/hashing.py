"""Residual hashing: one binary-autoencoder stage, trained through a tempered sigmoid.

A stage maps each residual row ``r`` (d) to ``B`` binary units and back:

* encoder ``h = r @ W_e + b_e``; during training the units are ``u = sigmoid(h / tau)``, used as the
  soft code ``2u - 1`` in ``[-1, 1]``; ``tau`` is annealed geometrically toward 0 (a step function);
* decoder ``y = (2u - 1) @ W_d + b_d``.

**Saturation criterion.** A unit value is *saturated* when ``|2u - 1| > saturation_level`` (0.98:
the sigmoid is within 1% of 0 or 1 and passes almost no gradient). Training stops at the first epoch
whose fraction of saturated unit values reaches ``stop_saturation`` (or after ``max_epochs``), i.e.
before the units saturate fully. The codes are then fixed as hard bits ``h > 0``; the decoder is
refitted to the hard codes (weighted least squares, then a few gradient steps on the chosen loss), and
optionally each row's bits are refined by coordinate descent (flip a bit when it lowers that row's
error). The encoder is a training device only: it is not stored, since codes are stored per row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .least_squares import normal_equations, solve_ridge
from .losses import LossFn, mse_loss
from .resources import WIDE_BLOCK_SHARE, row_blocks
from .settings import StageSchedule


@dataclass
class StageResult:
    """A trained, frozen stage: hard codes (n x B, {0,1} uint8) and its decoder (B x d, d)."""

    bits: torch.Tensor
    decoder_weight: torch.Tensor
    decoder_bias: torch.Tensor
    stats: dict = field(default_factory=dict)

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decoder output for every row of this stage."""
        signs = self.bits.to(dtype) * 2 - 1
        return signs @ self.decoder_weight.to(dtype) + self.decoder_bias.to(dtype)


class HashingStage(nn.Module):
    """Encoder/decoder pair of one stage with tempered-sigmoid binary units."""

    def __init__(self, dim: int, bits: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, bits)
        self.decoder = nn.Linear(bits, dim)

    def soft_codes(self, residual: torch.Tensor, tau: float) -> torch.Tensor:
        """``2 * sigmoid(h / tau) - 1`` (the tempered-sigmoid units mapped to [-1, 1])."""
        return 2 * torch.sigmoid(self.encoder(residual) / tau) - 1

    def forward(self, residual: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.soft_codes(residual, tau)
        return self.decoder(codes), codes


def _init_encoder(
    stage: HashingStage, residual: torch.Tensor, weights: torch.Tensor, gen: torch.Generator
) -> None:
    """PCA initialisation: units start as the top principal directions of the (weighted) residual.

    With more units than dimensions the extra units are random unit directions. Each unit is scaled
    to unit standard deviation so that ``tau = 1`` starts the sigmoid in its soft regime.
    """
    n, d = residual.shape
    bits = stage.encoder.out_features
    w = (weights / weights.sum()).double()
    device = residual.device
    mean = torch.zeros(d, dtype=torch.float64, device=device)
    for rows in row_blocks(n, d):
        mean += w[rows] @ residual[rows].double()
    cov = torch.zeros(d, d, dtype=torch.float64, device=device)
    for rows in row_blocks(n, d):
        centered = residual[rows].double() - mean
        cov += centered.T @ (centered * w[rows].unsqueeze(1))
    _, vecs = torch.linalg.eigh((cov / cov.diagonal().mean()).float())  # ascending eigenvalues
    vecs = vecs.double()
    k = min(bits, d)
    dirs = torch.randn(bits, d, generator=gen, dtype=torch.float64).to(device)
    dirs[:k] = vecs[:, -k:].flip(1).T
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    variance = torch.zeros(bits, dtype=torch.float64, device=device)
    for rows in row_blocks(n, max(d, bits)):
        variance += w[rows] @ ((residual[rows].double() - mean) @ dirs.T).pow(2)
    scale = variance.sqrt().clamp_min(1e-8)
    with torch.no_grad():
        stage.encoder.weight.copy_((dirs / scale.unsqueeze(1)).float())
        stage.encoder.bias.copy_((-(mean @ dirs.T) / scale).float())


def _hard_signs(h: torch.Tensor) -> torch.Tensor:
    """The step function the tempered sigmoid tends to, as {-1, +1}: bit = h > 0."""
    return torch.where(h > 0, 1.0, -1.0)


@torch.no_grad()
def hard_codes(stage: HashingStage, residual: torch.Tensor) -> torch.Tensor:
    """The stage's hard codes of every row as {-1, +1} int8 (n x B), computed in row blocks."""
    n, d = residual.shape
    signs = torch.empty(n, stage.encoder.out_features, dtype=torch.int8, device=residual.device)
    for rows in row_blocks(n, max(d, signs.shape[1])):
        signs[rows] = _hard_signs(stage.encoder(residual[rows])).to(torch.int8)
    return signs


def weighted_loss(
    loss_fn: LossFn, target: torch.Tensor, weights: torch.Tensor, decode, signs: torch.Tensor | None = None
) -> torch.Tensor:
    """``loss_fn`` over every row, in row blocks: ``decode(rows)`` reconstructs ``target[rows]``.

    Every loss is a weighted mean over rows, so the blocks' losses, each weighted by its share of the
    total weight, add up to the loss of the whole matrix. Gradients flow (call under ``no_grad`` to
    evaluate only).
    """
    total_weight = weights.sum()
    loss = target.new_zeros(())
    for rows in row_blocks(target.shape[0], target.shape[1]):
        share = weights[rows].sum() / total_weight
        loss = loss + loss_fn(target[rows], decode(rows), weights[rows]) * share
    return loss


def fit_decoder(
    signs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ridge least squares ``target ~ signs @ W + b`` (signs in {-1, +1}; no ridge on ``b``)."""
    ones = torch.ones(signs.shape[0], 1, device=target.device)
    theta, _ = solve_ridge(*normal_equations(signs, ones, target, weights), ridge, free=1)
    return theta[:-1], theta[-1]


def refine_bits(
    signs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    sweeps: int,
    *,
    fixed: torch.Tensor | None = None,
    fixed_theta: torch.Tensor | None = None,
    on_change=None,
) -> tuple[torch.Tensor, int]:
    """Coordinate descent on each row's bits for the squared error; updates ``signs`` in place.

    Flipping bit ``j`` of a row changes its reconstruction by ``-2 s_j w_j``, so its squared error
    changes by ``4 s_j (e . w_j) + 4 |w_j|^2`` with ``e`` the row's current error. The projections
    ``P = E W^T`` are kept up to date through the Gram matrix ``G = W W^T``, so a sweep over all bits
    costs O(n B) plus O(B) per flip instead of O(n B d). Rows are independent, so they are refined in
    blocks and the memory stays that of one block whatever ``n``.

    The rows' reconstruction is ``signs @ weight + bias`` plus ``fixed @ fixed_theta`` when given (the
    parts the bits do not change, e.g. the low-rank part). ``signs`` may be any signed dtype; a sign of
    0 marks a bit the row does not have (a stage that skips the row): it never flips. ``on_change(rows,
    old, new)`` is called for each block's rows whose bits changed (their indices and float signs before
    and after, fresh copies the callback may overwrite). Returns ``signs`` and the number of flips.
    """
    gram = weight @ weight.T  # B x B
    flips = 0
    at_most = int(WIDE_BLOCK_SHARE * target.numel())
    for rows in row_blocks(signs.shape[0], max(signs.shape[1], target.shape[1]), wide=True, at_most=at_most):
        before = signs[rows]  # read once (a packed ``signs`` unpacks on every read)
        block = before.to(torch.float32, copy=True)  # refined in place; ``before`` keeps the old bits
        error = target[rows] - (block @ weight + bias)
        if fixed is not None:
            error -= fixed[rows].float() @ fixed_theta
        proj = error @ weight.T
        del error  # the block's temporaries are what the memory bound counts: one at a time
        refined, changed = _refine_block(block, proj, gram, sweeps)
        del proj
        flips += changed
        if changed:
            if on_change is not None:
                moved = (refined != before).any(dim=1).nonzero().squeeze(1)
                on_change(moved + rows.start, before[moved].float(), refined[moved])
            signs[rows] = refined.to(signs.dtype)
    return signs, flips


def _refine_block(
    signs: torch.Tensor, proj: torch.Tensor, gram: torch.Tensor, sweeps: int
) -> tuple[torch.Tensor, int]:
    """:func:`refine_bits` on one block: ``signs`` and their projections ``proj`` (both n x B, updated).

    Row-major, so a flip updates its row's B projections in one contiguous stretch (a column-major
    layout made each sparse flip B strided writes: 10x slower at B = 1,800).
    """
    n = signs.shape[0]
    flips = 0
    for _ in range(sweeps):
        changed = 0
        for j in range(gram.shape[0]):
            column = signs[:, j]
            flip = column * proj[:, j] + gram[j, j] < 0
            rows = flip.nonzero().squeeze(1)
            if rows.numel() > n // 16:  # many flips: one dense rank-1 update
                proj.addr_(torch.where(flip, column, 0.0), gram[j], alpha=2.0)
                signs[:, j] = torch.where(flip, -column, column)
            elif rows.numel():  # few flips: update only the flipped rows' projections
                old = column[rows]
                proj.index_add_(0, rows, (2.0 * old).unsqueeze(1) * gram[j].unsqueeze(0))
                signs[rows, j] = -old
            changed += rows.numel()
        flips += changed
        if changed == 0:
            break
    return signs, flips


def train_stage(
    residual: torch.Tensor,
    bits: int,
    *,
    loss_fn: LossFn,
    weights: torch.Tensor | None = None,
    schedule: StageSchedule | None = None,
    storage_dtype: torch.dtype = torch.float16,
    seed: int = 0,
    progress=None,
) -> StageResult:
    """Train one stage on ``residual`` (n x d) and return its frozen hard codes and decoder.

    ``weights`` (n,) are per-row importance weights (e.g. token frequencies); ``storage_dtype`` is
    the dtype the decoder is stored in, applied before returning so that the next stage trains on
    what the stored stage really leaves over. ``progress`` is an optional tqdm-like bar over the epochs
    (total ``schedule.max_epochs``; ``update`` per epoch, closed when the units saturate earlier).
    """
    if bits < 1:
        raise ValueError(f"a hashing stage needs at least 1 bit, got {bits}")
    schedule = schedule or StageSchedule()
    n, d = residual.shape
    device = residual.device
    weights = torch.ones(n, device=device) if weights is None else weights.float().to(device)
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same random numbers on every device
    # every weight is re-initialised below: leave the global RNG alone
    with torch.random.fork_rng(devices=[]):
        stage = HashingStage(d, bits).to(device)
    _init_encoder(stage, residual, weights, gen)
    with torch.no_grad():
        w0, b0 = fit_decoder(hard_codes(stage, residual), residual, weights, schedule.ridge)
        stage.decoder.weight.copy_(w0.T)
        stage.decoder.bias.copy_(b0)
    opt = torch.optim.Adam(stage.parameters(), lr=schedule.lr)
    tau = schedule.tau_start
    history: list[dict] = []
    sampling = weights / weights.sum()
    batch = min(schedule.batch_size, n)
    seen = n if schedule.rows_per_epoch is None else min(n, schedule.rows_per_epoch)
    steps = max(1, math.ceil(seen / batch))
    saturation = 0.0
    for epoch in range(schedule.max_epochs):
        order = torch.randperm(n, generator=gen)[:seen].to(device)
        total, saturated, count = 0.0, 0, 0
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            recon, codes = stage(residual[idx], tau)
            # rows are weighted by frequency through the loss weights (normalised per batch)
            loss = loss_fn(residual[idx], recon, sampling[idx] * n)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)  # kept on the device: no synchronisation per step
            saturated += (codes.detach().abs() > schedule.saturation_level).sum()
            count += codes.numel()
        saturation = float(saturated) / count
        total = float(total)
        history.append({"epoch": epoch, "tau": tau, "loss": total / seen, "saturation": saturation})
        if progress is not None:
            progress.set_postfix(tau=f"{tau:.3f}", saturated=f"{saturation:.2f}", refresh=False)
            progress.update(1)
        if saturation >= schedule.stop_saturation:
            break
        tau *= schedule.tau_decay
    with torch.no_grad():
        signs = hard_codes(stage, residual)
        soft_loss = float(
            weighted_loss(loss_fn, residual, weights, lambda rows: stage(residual[rows], tau)[0])
        )
        weight, bias = fit_decoder(signs, residual, weights, schedule.ridge)
        flips = 0
        if schedule.refine_sweeps:
            signs, flips = refine_bits(signs, residual, weight, bias, schedule.refine_sweeps)
            weight, bias = fit_decoder(signs, residual, weights, schedule.ridge)
    if loss_fn is not mse_loss:  # the least-squares decoder already minimises the MSE (up to the ridge)
        weight, bias = tune_decoder(signs, residual, weights, weight, bias, loss_fn, schedule.decoder_steps)
    weight, bias = weight.to(storage_dtype), bias.to(storage_dtype)
    # the +-1 int8 signs become the 0/1 bits in place: no second and third V x bits copy (bool, uint8)
    result = StageResult(bits=signs.clamp_(min=0).view(torch.uint8), decoder_weight=weight, decoder_bias=bias)
    del signs
    with torch.no_grad():
        w_hard, b_hard = weight.float(), bias.float()
        hard_loss = float(
            weighted_loss(
                loss_fn, residual, weights, lambda rows: (result.bits[rows].float() * 2 - 1) @ w_hard + b_hard
            )
        )
    result.stats = {
        "bits": bits,
        "rows": n,
        "epochs": len(history),
        "final_tau": tau,
        "saturation": saturation,
        "stopped_on_saturation": saturation >= schedule.stop_saturation,
        "soft_loss": soft_loss,
        "hard_loss": hard_loss,
        "refine_flips": flips,
        "schedule": asdict(schedule),
        "history": history,
    }
    return result


def tune_decoder(
    signs: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    loss_fn: LossFn,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A few full-batch Adam steps on the chosen loss, starting from the least-squares decoder.

    The full-batch gradient is accumulated over row blocks (``signs`` may be any dtype; each block is
    cast to float), so no (n x d) tensor is built.
    """
    if steps <= 0:
        return weight, bias
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=1e-3 * _std(target))
    best = (float("inf"), weight, bias)
    total_weight = weights.sum()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for rows in row_blocks(target.shape[0], max(target.shape[1], signs.shape[1])):
            share = weights[rows].sum() / total_weight
            part = loss_fn(target[rows], signs[rows].float() @ w + b, weights[rows]) * share
            part.backward()
            loss += float(part.detach())
        if loss < best[0]:
            best = (loss, w.detach().clone(), b.detach().clone())
        opt.step()
    return best[1], best[2]


def _std(matrix: torch.Tensor) -> float:
    """Standard deviation of every entry of ``matrix``, in row blocks (float64 sums)."""
    total = squares = 0.0
    for rows in row_blocks(matrix.shape[0], matrix.shape[1]):
        block = matrix[rows].double()
        total += float(block.sum())
        squares += float((block * block).sum())
    count = matrix.numel()
    return max(squares / count - (total / count) ** 2, 0.0) ** 0.5 * (count / max(count - 1, 1)) ** 0.5
