"""The compression of one V x d matrix: SVD, the hashing stages, the joint refit and the fidelity report
(:func:`compress_matrix`), in row blocks, on the settings' device."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..core.lighttoken_codec import LightTokenEmbedding, pack_bits
from .frequencies import frequency_rank
from .hashing import train_stage, tune_decoder
from .joint import PackedSigns, refine_jointly
from .losses import LossFn, get_loss
from .metrics import matrix_fidelity
from .planner import CompressionPlan, plan_for_ratio
from .report import CompressionReport
from .resources import (
    FittedThreads,
    map_rows,
    resolve_device,
    return_freed_blocks_to_the_system,
    row_blocks,
    trim_free_memory,
)
from .sensitivity import whitening
from .settings import SENSITIVITY_SHRINKAGE, CompressionSettings
from .svd import low_rank_factors
from .validation import (
    check_finite_module,
    check_frequencies,
    check_matrix,
    check_matrix_values,
    check_sensitivity,
)

__all__ = ["compress_matrix", "plan_for_settings"]

#: Matrices of at least this many values get torch's threads fitted to the idle cores (a 0.2 s probe).
_THREAD_FITTING_MIN_ELEMENTS = 1 << 20


def _row_weights(frequencies: torch.Tensor | None, power: float, n: int) -> torch.Tensor:
    if frequencies is None or power == 0:
        return torch.ones(n)
    f = frequencies.double() / frequencies.sum()
    w = (f + 1.0 / n) ** power  # smoothed: unseen tokens keep a floor weight
    return (w / w.mean()).float()


def plan_for_settings(
    v: int, d: int, settings: CompressionSettings, *, frequency_aware: bool, has_padding_row: bool
) -> CompressionPlan:
    """The planner's layout for a V x d matrix under ``settings`` (raises with the possible range if none fits)."""
    fbytes = torch.empty((), dtype=getattr(torch, settings.factor_dtype)).element_size()
    return plan_for_ratio(
        v,
        d,
        settings.ratio if settings.budget_bytes is None else None,
        budget_bytes=settings.budget_bytes,
        svd_rank=settings.svd_rank,
        num_stages=settings.num_stages,
        stage_bits=settings.stage_bits,
        max_stage_bits=settings.max_stage_bits,
        frequency_aware=frequency_aware,
        frequency_share=settings.frequency_share,
        tier_decay=settings.tier_decay,
        factor_bytes=fbytes,
        has_padding_row=has_padding_row,
        int8_decoders=settings.decoder_dtype == "int8",
    )


def compress_matrix(
    matrix: torch.Tensor,
    settings: CompressionSettings,
    *,
    frequencies: torch.Tensor | None = None,
    padding_idx: int | None = None,
    progress: bool = True,
    frequency_source: str = "none",
    sensitivity: torch.Tensor | None = None,
    sensitivity_info: dict | None = None,
) -> tuple[LightTokenEmbedding, CompressionReport]:
    """Compress a dense V x d matrix into a :class:`LightTokenEmbedding` and a report.

    ``sensitivity`` (d x d, from :func:`embedding_sensitivity`) makes every stage minimise the error in
    that metric (shrunk by ``settings.sensitivity_shrinkage``): the compressor codes ``E A`` and folds
    ``A^-1`` into the stored factor and decoders, so the format and its size are unchanged.
    """
    rows, width = matrix.shape if isinstance(matrix, torch.Tensor) and matrix.dim() == 2 else (0, 0)
    fit = rows * width >= _THREAD_FITTING_MIN_ELEMENTS
    with FittedThreads(enabled=fit, threads=settings.threads) as threads:
        return _compress_matrix(
            matrix,
            settings,
            frequencies=frequencies,
            padding_idx=padding_idx,
            progress=progress,
            frequency_source=frequency_source,
            sensitivity=sensitivity,
            sensitivity_info=sensitivity_info,
            threads=threads,
        )


def _compress_matrix(
    matrix: torch.Tensor,
    settings: CompressionSettings,
    *,
    frequencies: torch.Tensor | None = None,
    padding_idx: int | None = None,
    progress: bool = True,
    frequency_source: str = "none",
    sensitivity: torch.Tensor | None = None,
    sensitivity_info: dict | None = None,
    threads: FittedThreads | None = None,
) -> tuple[LightTokenEmbedding, CompressionReport]:
    start = time.perf_counter()
    e = check_matrix(matrix)
    v, d = e.shape
    check_matrix_values(e, settings.factor_dtype)
    device = resolve_device(settings.device)
    return_freed_blocks_to_the_system()
    use_metric = settings.sensitivity_weighted and sensitivity is not None
    if sensitivity is not None:
        sensitivity = check_sensitivity(sensitivity, d)
    if padding_idx is not None and not -v <= padding_idx < v:
        raise ValueError(f"padding_idx {padding_idx} is outside the {v} rows")
    padding_idx = padding_idx % v if padding_idx is not None else None
    if frequencies is not None:
        frequencies = check_frequencies(frequencies, v)
    use_freq = settings.frequency_aware and frequencies is not None
    factor_dtype = getattr(torch, settings.factor_dtype)
    plan = plan_for_settings(v, d, settings, frequency_aware=use_freq, has_padding_row=padding_idx is not None)
    module = LightTokenEmbedding(
        v,
        d,
        svd_rank=plan.svd_rank,
        stage_bits=plan.stage_bits,
        stage_rows=plan.stage_rows,
        padding_idx=padding_idx,
        factor_dtype=factor_dtype,
        decoder_dtype=getattr(torch, settings.decoder_dtype),
        dtype=matrix.dtype,  # lookups come back in the matrix's dtype, as from an nn.Embedding
    )
    loss_fn = get_loss(settings.loss)
    if settings.loss == "cosine_bound" and settings.angle_weight != 1:
        base = loss_fn
        loss_fn = lambda x, y, w=None: base(x, y, w, angle_weight=settings.angle_weight)  # noqa: E731
    # a frequency tier covers the most frequent rows, stored in id order (a coverage mask marks them)
    order = torch.argsort(frequency_rank(frequencies)) if plan.has_tiers else torch.arange(v)
    stage_ids = [order[:rows].sort().values for rows in plan.stage_rows]  # each stage's rows, as stored
    weights = _row_weights(frequencies if use_freq else None, settings.frequency_power, v).to(device)
    # with a metric: code E A and store everything that decodes multiplied by A^-1 (docstring above)
    shrinkage = settings.sensitivity_shrinkage
    if shrinkage is None:  # by metric: the LM metric's info says so; a given matrix counts as the encoder's
        shrinkage = SENSITIVITY_SHRINKAGE[(sensitivity_info or {}).get("metric", "hidden_states")]
    to_metric, from_metric = whitening(sensitivity.to(device), shrinkage) if use_metric else (None, None)
    work = e.to(device)  # the matrix where the heavy steps run (no copy on the CPU)

    def whiten(t: torch.Tensor) -> torch.Tensor:
        return (t.double() @ to_metric).float() if use_metric else t

    def whitened_matrix() -> torch.Tensor:  # the matrix in the metric space, made one row block at a time
        return map_rows(lambda rows: whiten(work[rows]), v, d, device=device) if use_metric else work

    def unwhiten(t: torch.Tensor) -> torch.Tensor:
        return (t.double() @ from_metric if use_metric else t).to(factor_dtype)

    joint = settings.joint_iterations > 0 and bool(plan.stage_bits)
    bar = tqdm(total=len(plan.stage_bits) + 1 + joint, desc="LightToken", unit="stage", disable=not progress)
    with torch.no_grad():
        bar.set_description("LightToken: SVD")
        timings: dict = {"stages": []}
        clock = time.perf_counter()
        left, right = low_rank_factors(whitened_matrix(), plan.svd_rank, seed=settings.seed)
        module.lowrank_left.copy_(left.to(factor_dtype))
        module.lowrank_right.copy_(unwhiten(right))
        del left, right
        # the residual lives in the metric space: what the stored (rounded) parts leave over, times A
        stored_left = module.lowrank_left.float().to(device)
        stored_right = module.lowrank_right.float().to(device)
        residual = map_rows(
            lambda rows: whiten(work[rows] - stored_left[rows] @ stored_right), v, d, device=device
        )
        if padding_idx is not None:
            module.padding_row.copy_(e[padding_idx].to(factor_dtype))
        for s, ids in enumerate(stage_ids):
            if plan.stage_rows[s] < v:
                covered = torch.zeros(1, v, dtype=torch.bool)
                covered[0, ids] = True
                getattr(module, f"coverage_{s}").copy_(pack_bits(covered)[0])
    timings["svd"] = time.perf_counter() - clock
    bar.update(1)
    stage_stats = []
    for s, (bits, rows) in enumerate(zip(plan.stage_bits, plan.stage_rows)):
        bar.set_description(f"LightToken: stage {s + 1}/{len(plan.stage_bits)} ({bits} bits x {rows} rows)")
        trim_free_memory()  # the last step's freed temporaries
        if threads is not None:
            threads.refit()  # other processes may have started or stopped since the last step
        clock = time.perf_counter()
        ids = stage_ids[s].to(device)
        epochs = tqdm(
            total=settings.schedule.max_epochs, desc=f"  stage {s + 1} epochs (at most)", unit="epoch",
            leave=False, disable=not progress,
        )  # fmt: skip
        result = train_stage(
            residual if rows == v else residual[ids],  # no copy for a stage over every row
            bits,
            loss_fn=loss_fn,
            weights=weights[ids],
            schedule=settings.schedule,
            storage_dtype=factor_dtype,
            seed=settings.seed * 1000 + s,
            progress=epochs,
        )
        epochs.close()
        with torch.no_grad():
            codes = getattr(module, f"codes_{s}")
            for block in row_blocks(rows, codes.shape[1] * 8):  # packed block by block: no V-row temporaries
                codes[block] = pack_bits(result.bits[block]).cpu()
            module.set_decoder(s, unwhiten(result.decoder_weight), unwhiten(result.decoder_bias))
            decoder = module.decoder_weight(s).to(device)
            bias = getattr(module, f"decoder_{s}_bias").float().to(device)
            for block in row_blocks(rows, d):  # what the stored stage leaves over
                residual[ids[block]] -= whiten((result.bits[block].float() * 2 - 1) @ decoder + bias)
        stage_stats.append(result.stats)
        timings["stages"].append(time.perf_counter() - clock)
        del result
        bar.update(1)
    del residual
    joint_stats: dict = {}
    if joint:
        bar.set_description(f"LightToken: joint refinement ({settings.joint_iterations} rounds)")
        joint_weights = weights.clone()
        if padding_idx is not None:
            joint_weights[padding_idx] = 0  # stored exactly: its codes do not matter
        rounds = tqdm(
            total=settings.joint_iterations, desc="  joint rounds (at most)", unit="round", leave=False,
            disable=not progress,
        )  # fmt: skip
        stage_ids = [ids.to(device) for ids in stage_ids]
        trim_free_memory()
        if threads is not None:
            threads.refit()
        clock = time.perf_counter()
        joint_stats = _refine_jointly(
            module, whitened_matrix(), stage_ids, joint_weights, settings, loss_fn, unwhiten, rounds
        )
        rounds.close()
        timings["joint"] = time.perf_counter() - clock
        bar.update(1)
    bar.close()
    check_finite_module(module, settings.factor_dtype)
    if module.compressed_nbytes != plan.nbytes:  # the accounting and the module must agree exactly
        raise AssertionError(f"planned {plan.nbytes} bytes but the module stores {module.compressed_nbytes}")
    report = CompressionReport(
        num_embeddings=v,
        embedding_dim=d,
        dense_nbytes=module.dense_nbytes,
        compressed_nbytes=module.compressed_nbytes,
        plan=plan.to_dict(),
        settings=settings.to_dict(),
        stages=stage_stats,
        joint=joint_stats,
        frequency_source=frequency_source if use_freq else "none",
        sensitivity={**(sensitivity_info or {}), "shrinkage": shrinkage}
        if use_metric
        else {},
    )
    trim_free_memory()
    with torch.no_grad():
        clock = time.perf_counter()
        report.fidelity = matrix_fidelity(e, module.weight, seed=settings.seed)
    timings["fidelity"] = time.perf_counter() - clock
    timings["threads"] = threads.counts if threads is not None else None
    report.timings = timings
    report.seconds = time.perf_counter() - start + float(report.sensitivity.get("seconds", 0.0))
    module.compression_report = report
    return module, report


def _refine_jointly(
    module: LightTokenEmbedding,
    target: torch.Tensor,
    stage_ids: list[torch.Tensor],
    weights: torch.Tensor,
    settings: CompressionSettings,
    loss_fn: LossFn,
    unwhiten: Callable[[torch.Tensor], torch.Tensor],
    progress=None,
) -> dict:
    """Re-fit ``module``'s stages together (:func:`refine_jointly`) and store the result in place.

    ``target`` is the matrix in the metric space the stages were trained in and ``stage_ids[s]`` the
    row ids of stage ``s`` in storage order. For a loss other than MSE the joint decoders get the same few gradient
    steps on that loss as a single stage's decoder does.
    """
    v, device = target.shape[0], target.device
    # every row's bits of every stage at one bit each (skipped rows' bits masked by the coverage)
    covered = torch.zeros(v, len(module.stage_bits), device=device)
    packed = []
    for s, ids in enumerate(stage_ids):
        codes = getattr(module, f"codes_{s}")
        packed.append(torch.zeros(v, codes.shape[1], dtype=torch.uint8, device=device))
        packed[s][ids] = codes.to(device)
        covered[ids, s] = 1.0
    signs = PackedSigns(packed, module.stage_bits, covered)
    left = module.lowrank_left.detach().float().to(device)
    fit = refine_jointly(
        target,
        left,
        signs,
        module.stage_bits,
        covered,
        weights,
        iterations=settings.joint_iterations,
        ridge=settings.schedule.ridge,
        progress=progress,
    )
    weights_per_stage, biases = fit.decoder_weights, fit.decoder_biases
    if settings.loss != "mse" and covered[:, 0].all():  # the extra bias folds into stage 0's
        tuned, extra = tune_decoder(
            signs.with_coverage(),
            map_rows(lambda rows: target[rows] - left[rows] @ fit.right, v, target.shape[1], device=device),
            weights,
            torch.cat([*weights_per_stage, torch.stack(biases)]),
            torch.zeros(target.shape[1], device=device),
            loss_fn,
            settings.schedule.decoder_steps,
        )
        *weights_per_stage, stacked = tuned.split([*module.stage_bits, len(biases)])
        biases = [stacked[0] + extra, *stacked[1:]]
    with torch.no_grad():
        module.lowrank_right.copy_(unwhiten(fit.right))
        for s, ids in enumerate(stage_ids):
            getattr(module, f"codes_{s}").copy_(packed[s][ids].cpu())
            module.set_decoder(s, unwhiten(weights_per_stage[s]), unwhiten(biases[s]))
    return fit.stats
