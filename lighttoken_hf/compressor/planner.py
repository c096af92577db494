"""Size accounting and the ratio planner.

The compression ratio is ``V * d * 4`` (the fp32 matrix) divided by the bytes of everything needed to
rebuild the matrix: packed codes, low-rank factors, decoder weights and biases, the padding row and
the coverage masks of the frequency tiers. :func:`plan_nbytes` counts exactly the tensors a
:class:`~lighttoken_hf.core.lighttoken_codec.LightTokenEmbedding` stores, so a plan's ratio is the
real ratio of the module it builds.

:func:`plan_for_ratio` turns a target (ratio or byte budget) into a :class:`CompressionPlan`:

* the low-rank part gets rank ``svd_rank`` (default: :func:`default_svd_rank`);
* **uniform** plans give every row the same number of code bits, split into stages of at most
  ``max_stage_bits`` bits;
* **frequency-aware** plans give every row ``base`` bits and spend ``frequency_share`` of the code
  bytes (default: :func:`default_frequency_share` of the target ratio) on extra stages for the most
  frequent tokens: extra stage ``j`` covers the ``V * q**j`` most
  frequent rows (``q = tier_decay``), which is the bit allocation that minimises the
  frequency-weighted error when token frequencies follow Zipf's law and each stage removes a fixed
  fraction of a row's error (frequent rows get ``log``-more stages).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import asdict, dataclass, field, replace

_FP32 = 4


@dataclass
class CompressionPlan:
    """What a LightToken compression stores: the shapes that fix its size in bytes."""

    num_embeddings: int
    embedding_dim: int
    svd_rank: int
    stage_bits: list[int]
    stage_rows: list[int]
    factor_bytes: int = 2
    has_padding_row: bool = False
    int8_decoders: bool = False
    notes: dict = field(default_factory=dict)

    @property
    def has_tiers(self) -> bool:
        """Whether some stage covers only the most frequent rows (and so stores a coverage mask)."""
        return any(r < self.num_embeddings for r in self.stage_rows)

    @property
    def nbytes(self) -> int:
        return plan_nbytes(self)

    @property
    def ratio(self) -> float:
        return self.num_embeddings * self.embedding_dim * _FP32 / self.nbytes

    def to_dict(self) -> dict:
        return {**asdict(self), "nbytes": self.nbytes, "ratio": self.ratio}

    def with_stages(self, svd_rank: int, stage_bits: list[int], stage_rows: list[int]) -> CompressionPlan:
        """The same storage formats with other shapes (and no notes)."""
        return replace(
            self, svd_rank=svd_rank, stage_bits=list(stage_bits), stage_rows=list(stage_rows), notes={}
        )

    def decoder_nbytes(self, bits: int) -> int:
        """Bytes of one stage's decoder: its weight (int8 plus a scale per bit, or factor dtype) and bias."""
        d, fb = self.embedding_dim, self.factor_bytes
        weight = bits * d + bits * fb if self.int8_decoders else bits * d * fb
        return weight + d * fb


def coverage_bytes(num_embeddings: int) -> int:
    """Bytes of one frequency tier's coverage mask (1 bit per token, packed)."""
    return (num_embeddings + 7) // 8


def plan_nbytes(plan: CompressionPlan) -> int:
    """Exact bytes of every tensor the plan's ``LightTokenEmbedding`` stores."""
    v, d, fb = plan.num_embeddings, plan.embedding_dim, plan.factor_bytes
    total = (v + d) * plan.svd_rank * fb
    total += d * fb if plan.has_padding_row else 0
    for bits, rows in zip(plan.stage_bits, plan.stage_rows):
        total += rows * ((bits + 7) // 8) + plan.decoder_nbytes(bits)
        total += coverage_bytes(v) if rows < v else 0
    return total


def _split_bits(total_bits: int, max_stage_bits: int) -> list[int]:
    """Split ``total_bits`` (a multiple of 8) into near-equal stages of at most ``max_stage_bits``."""
    max_stage_bits = max(8, max_stage_bits // 8 * 8)
    stages = max(1, math.ceil(total_bits / max_stage_bits))
    per, extra = divmod(total_bits // 8, stages)  # in bytes: spread the remainder over the first stages
    return [8 * (per + (1 if s < extra else 0)) for s in range(stages) if per + (1 if s < extra else 0) > 0]


def plan_for_ratio(
    num_embeddings: int,
    embedding_dim: int,
    ratio: float | None = None,
    *,
    budget_bytes: int | None = None,
    svd_rank: int | None = None,
    num_stages: int | None = None,
    stage_bits: int | None = None,
    max_stage_bits: int = 256,
    frequency_aware: bool = True,
    frequency_share: float | None = None,
    tier_decay: float = 0.35,
    min_tier_rows: int = 256,
    factor_bytes: int = 2,
    has_padding_row: bool = False,
    int8_decoders: bool = False,
) -> CompressionPlan:
    """Choose rank, stages, bits and rows so that the real ratio is at least ``ratio``.

    Give either ``ratio`` (> 1) or ``budget_bytes``. ``num_stages``/``stage_bits`` pin the uniform
    part's stage count or width (``num_stages=0`` gives the SVD-only ablation, which then uses the
    budget for a larger rank). ``factor_bytes`` and ``int8_decoders`` give the storage formats (an int8
    decoder weight carries one ``factor_bytes`` scale per code bit). Raises ``ValueError`` with what is
    possible when the target cannot be met.
    """
    v, d = num_embeddings, embedding_dim
    dense = v * d * _FP32
    if (ratio is None) == (budget_bytes is None):
        raise ValueError("give exactly one of ratio= or budget_bytes=")
    if ratio is not None:
        if not ratio > 1:
            raise ValueError(f"ratio must be > 1 (the fp32 matrix is {dense} bytes), got {ratio}")
        budget = budget_for_ratio(dense, ratio)
        if budget <= 0:
            raise ValueError(f"ratio {ratio} leaves no byte of the {dense}-byte matrix; choose a lower ratio")
    else:
        budget = int(budget_bytes)
        if budget <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        if budget >= dense:
            raise ValueError(
                f"budget_bytes {budget} is not below the {dense} bytes of the fp32 {v} x {d} matrix (ratio "
                f"{dense / budget:.2f} <= 1): that is no compression; give budget_bytes < {dense} (or ratio > 1)"
            )
    if num_stages is not None and num_stages < 0:
        raise ValueError(f"num_stages must be >= 0, got {num_stages}")
    if stage_bits is not None and stage_bits < 8:
        raise ValueError(f"stage_bits must be >= 8 (one byte per row per stage), got {stage_bits}")
    if frequency_share is None:
        frequency_share = default_frequency_share(dense / budget)
    if not 0 <= frequency_share < 1:
        raise ValueError(f"frequency_share must be in [0, 1), got {frequency_share}")

    shell = CompressionPlan(v, d, 0, [], [], factor_bytes, has_padding_row, int8_decoders)
    build = shell.with_stages

    if num_stages == 0:  # SVD-only ablation: the largest rank within budget
        rank = (
            svd_rank
            if svd_rank is not None
            else int((budget - (d * factor_bytes if has_padding_row else 0)) // ((v + d) * factor_bytes))
        )
        rank = min(rank, min(v, d))
        plan = build(rank, [], [])
        if rank < 1 or plan.nbytes > budget:
            raise ValueError(
                _impossible(
                    budget,
                    dense,
                    f"even a rank-1 SVD needs {build(1, [], []).nbytes} bytes",
                    build(1, [], []).nbytes,
                )
            )
        return plan

    plan_stages = functools.partial(
        _plan_stages, shell, budget, svd_rank, num_stages, stage_bits, max_stage_bits, frequency_share,
        tier_decay, min_tier_rows,
    )  # fmt: skip
    if frequency_aware:
        with contextlib.suppress(ValueError):  # the tiers do not fit: a uniform plan may still
            return plan_stages(tiers=True)
    return plan_stages(tiers=False)


def _plan_stages(
    shell: CompressionPlan,
    budget: int,
    svd_rank: int | None,
    num_stages: int | None,
    stage_bits: int | None,
    max_stage_bits: int,
    frequency_share: float,
    tier_decay: float,
    min_tier_rows: int,
    tiers: bool = True,
) -> CompressionPlan:
    """Base stages for all rows plus (``tiers``) frequency tiers; raises ValueError if nothing fits.

    ``shell`` carries the matrix shape and storage formats (its own stages are ignored)."""
    v, d, factor_bytes = shell.num_embeddings, shell.embedding_dim, shell.factor_bytes
    dense = v * d * _FP32
    build = shell.with_stages

    rank = default_svd_rank(v, d, budget) if svd_rank is None else svd_rank
    if rank < 0 or rank > min(v, d):
        raise ValueError(f"svd_rank must be in 0..{min(v, d)}, got {rank}")
    avail = budget - build(rank, [], []).nbytes
    # bytes per base bit: a code bit for every row plus one decoder row per bit
    per_bit = v / 8 + shell.decoder_nbytes(1) - d * factor_bytes
    share = frequency_share if tiers else 0.0
    if stage_bits is not None:
        stages = num_stages or max(1, int((avail * (1 - share)) // (stage_bits * per_bit + d * factor_bytes)))
        base = [stage_bits] * stages
    else:
        est_stages = num_stages or 1
        for _ in range(4):  # decoder biases depend on the stage count: iterate to a fixed point
            total_bits = int((avail * (1 - share) - est_stages * d * factor_bytes) // per_bit) // 8 * 8
            if total_bits < 8:
                break
            base = (
                _split_bits(total_bits, max_stage_bits)
                if num_stages is None
                else _split_even(total_bits, num_stages)
            )
            if len(base) == est_stages:
                break
            est_stages = len(base)
        if total_bits < 8:
            minimal = build(rank, [8], [v]).nbytes
            raise ValueError(
                _impossible(budget, dense, f"one 8-bit stage for all {v} rows needs {minimal} bytes", minimal)
            )
    bits = list(base)
    rows = [v] * len(bits)
    plan = build(rank, bits, rows)
    if plan.nbytes > budget:
        raise ValueError(
            _impossible(
                budget,
                dense,
                f"the requested {len(bits)} stage(s) of {bits} bits need {plan.nbytes} bytes",
                build(0, [8], [v]).nbytes,
            )
        )
    if tiers:
        tier_bits = min(max(bits), max_stage_bits)
        tier = 1
        while True:
            n_rows = int(v * tier_decay**tier)
            if n_rows < min_tier_rows:
                break
            trial = build(rank, bits + [tier_bits], rows + [n_rows])
            if trial.nbytes > budget:
                # spend what is left on one more tier for the most frequent rows, as wide as fits
                spare = budget - plan.nbytes - coverage_bytes(v)
                for width in sorted({tier_bits, *(w for w in (128, 64, 32) if w < tier_bits)}, reverse=True):
                    fit = (spare - plan.decoder_nbytes(width)) // ((width + 7) // 8)
                    if min(n_rows, fit) >= min_tier_rows:
                        trial = build(rank, bits + [width], rows + [int(min(n_rows, fit))])
                        bits, rows, plan = trial.stage_bits, trial.stage_rows, trial
                        break
                break
            bits, rows, plan = trial.stage_bits, trial.stage_rows, trial
            tier += 1
        if not plan.has_tiers:
            raise ValueError("no frequency tier fits")  # the caller falls back to a uniform plan
        if stage_bits is None:  # the tiers ran out of rows before the budget: widen the base stages
            plan = _widen_base(plan, budget, per_bit, max_stage_bits, num_stages)
        plan = _stretch_tiers(plan, budget)
    plan.notes = {
        "budget_bytes": budget,
        "target_ratio": dense / budget,
        "frequency_aware": plan.has_tiers,
        "frequency_share": frequency_share if plan.has_tiers else 0.0,
    }
    return plan


def _widen_base(
    plan: CompressionPlan, budget: int, per_bit: float, max_stage_bits: int, num_stages: int | None
) -> CompressionPlan:
    """Spend the bytes the frequency tiers left unused on more base bits (stages covering every row)."""
    v = plan.num_embeddings
    base = [b for b, r in zip(plan.stage_bits, plan.stage_rows) if r == v]
    tier_bits = plan.stage_bits[len(base) :]
    tier_rows = plan.stage_rows[len(base) :]
    extra = int((budget - plan.nbytes) // per_bit) // 8 * 8
    while extra >= 8:
        total = sum(base) + extra
        bits = _split_bits(total, max_stage_bits) if num_stages is None else _split_even(total, len(base))
        trial = plan.with_stages(plan.svd_rank, bits + tier_bits, [v] * len(bits) + tier_rows)
        if trial.nbytes <= budget:
            return trial
        extra -= 8
    return plan


def _stretch_tiers(plan: CompressionPlan, budget: int) -> CompressionPlan:
    """Spend what is still left by letting every tier cover proportionally more of the frequent rows."""
    v = plan.num_embeddings

    def stretched(factor: float) -> CompressionPlan:
        rows = [r if r == v else min(v - 1, int(r * factor)) for r in plan.stage_rows]
        return plan.with_stages(plan.svd_rank, plan.stage_bits, rows)

    low, high = 1.0, float(v)
    for _ in range(40):  # bisect the largest factor that fits (nbytes grows with it)
        mid = (low + high) / 2
        low, high = (mid, high) if stretched(mid).nbytes <= budget else (low, mid)
    return stretched(low)


def _split_even(total_bits: int, stages: int) -> list[int]:
    per = max(8, total_bits // stages // 8 * 8)
    return [per] * stages


def budget_for_ratio(dense_nbytes: int, ratio: float) -> int:
    """The largest byte count whose ratio ``dense_nbytes / bytes`` is still at least ``ratio``."""
    budget = int(dense_nbytes // ratio)
    while dense_nbytes / (budget + 1) >= ratio:  # floor division of floats can fall one byte short
        budget += 1
    return budget


def default_frequency_share(ratio: float) -> float:
    """Share of the code bytes spent on frequency tiers: 0.25 up to ratio 25, rising with log2(ratio)
    to 0.55 at ratio 100 (and no further).

    The fewer bits a row gets, the more it pays to concentrate them on the tokens text is made of:
    measured on all-MiniLM-L6-v2 (``benchmarks/sweep_defaults.py``, docs/method.md), the best share
    on end-to-end cosine was 0.25 at ratio 25 (0.4 and 0.55 no better) and 0.55 at ratio 100
    (0.25 / 0.4 / 0.7 worse).
    """
    return float(min(0.55, max(0.25, 0.25 + 0.15 * math.log2(max(ratio, 1e-9) / 25))))


def default_svd_rank(num_embeddings: int, embedding_dim: int, budget_bytes: int) -> int:
    """Rank of the low-rank part: a small share (about 5%) of the budget, at most d / 16.

    Measured on all-MiniLM-L6-v2 (docs/method.md): a code bit removes more error per byte than an
    fp16 factor coordinate, so the SVD part is kept small; it still captures the dominant directions
    cheaply and lets the hashing stages work on a centred, whitened residual.
    """
    per_rank = (num_embeddings + embedding_dim) * 2
    return int(max(0, min(embedding_dim // 16, (0.05 * budget_bytes) // per_rank)))


def _impossible(budget: int, dense: int, why: str, smallest: int) -> str:
    """The error message of an unreachable target; ``smallest``: bytes of the smallest possible plan."""
    return (
        f"cannot compress into {budget} bytes (ratio {dense / budget:.1f}): {why}. The largest ratio "
        f"possible for this matrix is {dense / smallest:.1f} ({smallest} bytes); choose a ratio up to that "
        "(or fewer/smaller stages)."
    )
