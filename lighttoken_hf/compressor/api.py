"""The one verb: :func:`compress` a model's input embeddings (or a bare matrix) with LightToken."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core.configuration_lighttoken import LightTokenConfig
from ..core.lighttoken_codec import LightTokenEmbedding, pack_bits
from ..core.modeling_lighttoken import LIGHTTOKEN_CLASSES, LightTokenForCausalLM, LightTokenPreTrainedModel
from ..fidelity import matrix_fidelity
from .frequencies import frequency_rank, general_text_frequencies, general_text_samples
from .hashing import train_stage, tune_decoder
from .joint import PackedSigns, refine_jointly
from .lm_sensitivity import lm_sensitivity
from .losses import LossFn, get_loss
from .planner import CompressionPlan, plan_for_ratio
from .provenance import record_base_model
from .resources import (
    FittedThreads,
    map_rows,
    resolve_device,
    return_freed_blocks_to_the_system,
    row_blocks,
    trim_free_memory,
)
from .sensitivity import embedding_sensitivity, whitening
from .settings import CompressionSettings
from .svd import low_rank_factors
from .validation import (
    check_finite_module,
    check_frequencies,
    check_matrix_values,
    check_sensitivity,
)

logger = logging.getLogger(__name__)

#: Matrices of at least this many values get torch's threads fitted to the idle cores (a 0.2 s probe).
_THREAD_FITTING_MIN_ELEMENTS = 1 << 20


#: One line on which number matters, with the measured reference points (benchmarks/README.md).
_READING_GUIDE = (
    "the end-to-end cosine is what matters (1.0 = outputs unchanged; all-MiniLM-L6-v2 measured 0.98 at 25x "
    "and 0.88 at 100x on held-out text); a relative Frobenius error near 0.5 at 25x is normal (product "
    "quantization: 0.55)"
)


_LM_READING_GUIDE = (
    "the perplexity increase is what matters (0 = unchanged; SmolLM2-135M measured +3.6% at 8x and +97% "
    "at 25x on held-out text); next-token KL 0 and top-1 agreement 1 mean the same predictions"
)


def fmt_size(nbytes: float) -> str:
    """``1,234 B`` / ``1.2 KiB`` / ``3.4 MiB`` / ``1.0 GiB`` (binary units)."""
    if nbytes < 1024:
        return f"{int(nbytes):,} B"
    for unit in ("KiB", "MiB", "GiB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}"
    return str(nbytes)


def model_nbytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage counted once (tied weights once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class CompressionReport:
    """What a compression produced: plan, real size, fidelity and per-stage training statistics."""

    num_embeddings: int
    embedding_dim: int
    dense_nbytes: int
    compressed_nbytes: int
    plan: dict
    settings: dict
    fidelity: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)
    joint: dict = field(default_factory=dict)
    seconds: float = 0.0
    frequency_source: str = "none"
    sensitivity: dict = field(default_factory=dict)
    end_to_end: dict = field(default_factory=dict)
    #: wall seconds of each step: ``svd``, ``stages`` (a list), ``joint``, ``fidelity``
    timings: dict = field(default_factory=dict)
    #: bytes of the whole model's tensors before and after (``None`` for a bare matrix)
    model_nbytes_before: int | None = None
    model_nbytes_after: int | None = None
    #: what became of the model's output layer (``None``: the model has none)
    output_layer: str | None = None
    #: an untied output matrix compressed on its own: its fp32 and stored bytes and its fidelity
    output_dense_nbytes: int | None = None
    output_compressed_nbytes: int | None = None
    output_fidelity: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """fp32 bytes over stored bytes of every compressed token matrix (input, and an untied output)."""
        dense = self.dense_nbytes + (self.output_dense_nbytes or 0)
        return dense / (self.compressed_nbytes + (self.output_compressed_nbytes or 0))

    def to_dict(self, with_history: bool = False) -> dict:
        out = dataclasses.asdict(self)
        out["ratio"] = self.ratio
        if not with_history:
            out["stages"] = [
                {k: v for k, v in s.items() if k not in ("history", "schedule")} for s in self.stages
            ]
        return out

    def summary(self) -> str:
        """Human-readable fidelity report."""
        lines = [
            f"LightToken: {self.num_embeddings:,} x {self.embedding_dim:,} embedding",
            f"  {'real ratio':<27}{self.dense_nbytes / self.compressed_nbytes:.2f}x "
            f"({fmt_size(self.compressed_nbytes)} vs "
            f"{fmt_size(self.dense_nbytes)} fp32)",
            f"  {'svd rank':<27}{self.plan['svd_rank']}",
            f"  {'hashing stages (bits)':<27}{self.plan['stage_bits']}",
            f"  {'rows per stage':<27}{self.plan['stage_rows']}",
        ]
        names = {
            "rel_error": "relative Frobenius error",
            "mean_row_cosine": "mean row cosine",
            "min_row_cosine": "min row cosine",
            "nn_overlap": "top-10 NN overlap",
        }
        for key, label in names.items():
            if key in self.fidelity:
                lines.append(f"  {label:<27}{self.fidelity[key]:.4f}")
        for key, value in self.end_to_end.items():
            label = key.replace("_", " ")
            shown = (
                f"{value:.4f}"
                if isinstance(value, float)
                else repr(value)
                if isinstance(value, str)
                else value
            )
            lines.append(f"  {label:<27}{shown}")
        metric = (
            f"on ({self.sensitivity.get('calibration')}, shrinkage {self.sensitivity.get('shrinkage')})"
            if self.sensitivity
            else "off"
        )
        lines.append(f"  {'sensitivity metric':<27}{metric}")
        if self.joint.get("history"):
            first, last = self.joint["history"][0], self.joint["history"][-1]
            lines.append(
                f"  {'joint refinement':<27}{self.joint['iterations']} rounds, weighted error "
                f"{first['weighted_rel_error']:.4f} -> {last['weighted_rel_error']:.4f}"
            )
        lines.append(f"  {'compression time':<27}{self.seconds:.1f} s")
        if self.output_layer:
            lines.append(f"  {'output layer':<27}{self.output_layer}")
        if self.output_compressed_nbytes:
            lines.append(f"  {'ratio over both matrices':<27}{self.ratio:.2f}x")
        if self.model_nbytes_before and self.model_nbytes_after:
            before, after = self.model_nbytes_before, self.model_nbytes_after
            lines.append(
                f"  {'whole model':<27}{fmt_size(before)} -> {fmt_size(after)} ({before / after:.2f}x smaller)"
            )
        guide = _LM_READING_GUIDE if "perplexity_increase" in self.end_to_end else _READING_GUIDE
        lines.append(f"  {'how to read it':<27}{guide}")
        return "\n".join(lines)


def _check_matrix(matrix: Any) -> torch.Tensor:
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or a PreTrainedModel, got {type(matrix).__name__}")
    if matrix.dim() != 2:
        raise ValueError(f"the embedding matrix must be 2-D (vocab x dim), got shape {tuple(matrix.shape)}")
    if matrix.numel() == 0:
        raise ValueError(f"the embedding matrix is empty (shape {tuple(matrix.shape)})")
    if not matrix.is_floating_point():
        raise TypeError(f"the embedding matrix must be floating point, got {matrix.dtype}")
    matrix = matrix.detach().float().cpu()
    finite = all(bool(torch.isfinite(matrix[rows]).all()) for rows in row_blocks(*matrix.shape))
    if not finite:
        bad = (~torch.isfinite(matrix)).nonzero()[0].tolist()
        raise ValueError(
            f"the embedding matrix contains NaN or Inf (first at row {bad[0]}, column {bad[1]}); fix the weights first"
        )
    return matrix


def _check_tokenizer(tokenizer: Any, rows: int) -> None:
    """A tokenizer with more tokens than embedding rows produces ids the model cannot embed."""
    if tokenizer is not None and len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the embedding matrix has only {rows} rows, so ids "
            f">= {rows} have no embedding: pass the tokenizer that belongs to this model, or call "
            "model.resize_token_embeddings(len(tokenizer)) (and train the new rows) before compressing"
        )


def _row_weights(frequencies: torch.Tensor | None, power: float, n: int) -> torch.Tensor:
    if frequencies is None or power == 0:
        return torch.ones(n)
    f = frequencies.double() / frequencies.sum()
    w = (f + 1.0 / n) ** power  # smoothed: unseen tokens keep a floor weight
    return (w / w.mean()).float()


def _plan(
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
    e = _check_matrix(matrix)
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
    plan = _plan(v, d, settings, frequency_aware=use_freq, has_padding_row=padding_idx is not None)
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
    to_metric, from_metric = (
        whitening(sensitivity.to(device), settings.sensitivity_shrinkage) if use_metric else (None, None)
    )
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
        sensitivity={**(sensitivity_info or {}), "shrinkage": settings.sensitivity_shrinkage}
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


def _settings(settings: CompressionSettings | float | None, options: dict) -> CompressionSettings:
    """The settings of one :func:`compress` call: a settings object (``options`` override its fields),
    a ratio, or nothing (the defaults), with ``options`` as keyword shortcuts for any field."""
    if isinstance(settings, CompressionSettings):
        return settings.replace(**options) if options else settings
    if settings is not None:
        if isinstance(settings, bool) or not isinstance(settings, (int, float)):
            raise TypeError(
                "compress()'s second argument is a CompressionSettings or a ratio (a number > 1), got "
                f"{type(settings).__name__} {settings!r}"
            )
        if "ratio" in options:
            raise TypeError("compress() got the ratio twice: as its second argument and as ratio=")
        options = {"ratio": settings, **options}
    return CompressionSettings().replace(**options)


def _model_tokenizer(model: Any, tokenizer: Any) -> Any:
    """The given tokenizer, else the one saved with the model (``None`` when there is none)."""
    if tokenizer is None:
        path = getattr(model, "name_or_path", "") or getattr(
            getattr(model, "config", None), "_name_or_path", ""
        )
        if path:
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(path)
            except Exception as err:  # noqa: BLE001 - any failure means: no tokenizer available
                logger.warning("could not load a tokenizer from %r (%s)", path, err)
    return tokenizer


def _model_sensitivity(
    model: Any, tokenizer: Any, texts: Any, settings: CompressionSettings, progress: bool
) -> tuple[torch.Tensor | None, dict]:
    """The model's sensitivity metric on ``texts`` (default: wordfreq pseudo-sentences), timed."""
    if tokenizer is None:
        logger.warning("no tokenizer given or found: the sensitivity metric is off (pass tokenizer=)")
        return None, {}
    start = time.perf_counter()
    source = "given texts" if texts is not None else "wordfreq pseudo-sentences"
    if texts is None:
        texts = general_text_samples(seed=settings.seed)
    texts = list(texts)
    try:
        metric = embedding_sensitivity(model, tokenizer, texts, seed=settings.seed, progress=progress)
    except (TypeError, ValueError, RuntimeError) as err:  # e.g. a forward that needs more than input ids
        logger.warning("could not measure %s's sensitivity metric (%s); it is off", type(model).__name__, err)
        return None, {}
    eigvals = torch.linalg.eigvalsh(metric).flip(0)
    top = max(1, metric.shape[0] // 8)
    return metric, {
        "calibration": source,
        "calibration_texts": len(texts),
        "top_eighth_share": float(eigvals[:top].sum() / eigvals.sum()),
        "seconds": time.perf_counter() - start,
    }


def _lm_metric(
    model: Any,
    embedding: torch.nn.Module,
    tokenizer: Any,
    texts: Any,
    frequencies: torch.Tensor | None,
    scale: float,
    settings: CompressionSettings,
    progress: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict]:
    """The LM metric and row weights (:func:`lm_sensitivity`) on ``texts``, timed.

    The default calibration text is that of the encoder metric (wordfreq pseudo-sentences): general
    text, and not the builtin sentences on which the CLI reports perplexity.
    """
    if tokenizer is None:
        logger.warning("no tokenizer given or found: the LM metric is off (pass tokenizer=)")
        return None, None, {}
    start = time.perf_counter()
    source = "given texts" if texts is not None else "wordfreq pseudo-sentences"
    texts = list(texts) if texts is not None else general_text_samples(seed=settings.seed)
    output = model.get_output_embeddings()
    tied = getattr(output, "weight", None) is embedding.weight
    metric, weights, info = lm_sensitivity(
        model, tokenizer, texts, input_frequencies=frequencies, input_scale=scale, tied_output=tied,
        seed=settings.seed, progress=progress,
    )  # fmt: skip
    return (
        metric,
        weights,
        {"calibration": source, "metric": "lm", **info, "seconds": time.perf_counter() - start},
    )


def compress(
    model_or_matrix: Any,
    settings: CompressionSettings | float | None = None,
    *,
    tokenizer: Any = None,
    token_frequencies: torch.Tensor | None = None,
    calibration_texts: Any = None,
    sensitivity: torch.Tensor | None = None,
    progress: bool = True,
    inplace: bool = False,
    **options: Any,
) -> Any:
    """Compress a model's input token embeddings (or a bare V x d tensor) with LightToken.

    Args:
        model_or_matrix: a ``transformers.PreTrainedModel`` or a 2-D float tensor.
        settings: a :class:`CompressionSettings` (every choice, with its default), or just the target
            ratio (fp32 bytes / bytes of everything stored; the real ratio is at least this); default:
            ``CompressionSettings()``, 25x. Use ``budget_bytes=`` instead for a byte budget.
        tokenizer: used to estimate token frequencies from general English text (wordfreq) for the
            frequency-aware allocation; for a model it is loaded from ``model.name_or_path`` if omitted.
        token_frequencies: your own per-token counts or frequencies (length V) instead.
        calibration_texts: texts on which the model's sensitivity metric is measured (default: 256
            pseudo-sentences of words drawn by their general-English frequency; task-agnostic).
        sensitivity: a precomputed d x d metric (:func:`embedding_sensitivity`) instead; the only way
            to use the metric when compressing a bare tensor.
        progress: show progress bars.
        inplace: for a model, swap the embedding in the given model object instead of a copy.
        **options: any :class:`CompressionSettings` field as a shortcut (``ratio``, ``svd_rank``,
            ``loss``...); with a settings object they override its fields.

    Returns:
        For a tensor: a :class:`LightTokenEmbedding`. For a model: a LightToken model
        (``LightTokenModel`` or the matching task class) wrapping the backbone, whose
        ``get_input_embeddings()`` is the :class:`LightTokenEmbedding`. Either way the report is at
        ``.compression_report`` (a :class:`CompressionReport`; ``print(report.summary())``).
    """
    settings = _settings(settings, options)
    if isinstance(model_or_matrix, torch.Tensor):
        _check_tokenizer(tokenizer, _check_matrix(model_or_matrix).shape[0])
        freqs = token_frequencies
        source = "given" if freqs is not None else "none"
        if freqs is None and tokenizer is not None and settings.frequency_aware:
            freqs, source = general_text_frequencies(tokenizer, model_or_matrix.shape[0]), "wordfreq"
        module, _ = compress_matrix(
            model_or_matrix,
            settings,
            frequencies=freqs,
            progress=progress,
            frequency_source=source,
            sensitivity=sensitivity,
            sensitivity_info={"calibration": "given matrix"},
        )
        return module
    return _compress_model(
        model_or_matrix,
        settings,
        tokenizer,
        token_frequencies,
        calibration_texts,
        sensitivity,
        progress,
        inplace,
    )


def _compress_model(
    model: Any,
    settings: CompressionSettings,
    tokenizer: Any,
    token_frequencies: Any,
    calibration_texts: Any,
    sensitivity: torch.Tensor | None,
    progress: bool,
    inplace: bool,
) -> LightTokenPreTrainedModel:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"expected a transformers PreTrainedModel or a 2-D tensor, got {type(model).__name__}"
        )
    if isinstance(model, LightTokenPreTrainedModel):
        raise ValueError("this model is already LightToken-compressed")
    try:
        embedding = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        embedding = None
    if not isinstance(embedding, torch.nn.Embedding):
        raise ValueError(
            f"{type(model).__name__} has no nn.Embedding input embeddings (get_input_embeddings() returned "
            f"{type(embedding).__name__}); LightToken compresses token-embedding matrices only"
        )
    wrapper_cls = _wrapper_class(model)
    _check_no_shared_embedding(model, embedding)
    scale = embedding_scale(embedding)
    v = embedding.num_embeddings
    # an unreachable target fails now, before the tokenizer, frequencies and metric are computed
    _plan(
        v,
        embedding.embedding_dim,
        settings,
        frequency_aware=False,
        has_padding_row=embedding.padding_idx is not None,
    )
    needs_tokenizer = (settings.frequency_aware and token_frequencies is None) or (
        settings.sensitivity_weighted and sensitivity is None
    )
    tokenizer = _model_tokenizer(model, tokenizer) if needs_tokenizer else tokenizer
    _check_tokenizer(tokenizer, v)
    freqs, source = None, "none"
    if token_frequencies is not None:
        freqs, source = torch.as_tensor(token_frequencies, dtype=torch.float64), "given"
    elif settings.frequency_aware and tokenizer is not None:
        freqs, source = general_text_frequencies(tokenizer, v), f"wordfreq via {type(tokenizer).__name__}"
    elif settings.frequency_aware:
        logger.warning(
            "no tokenizer given or found: frequency-aware allocation is off (pass tokenizer= or token_frequencies=)"
        )
    metric_kind = settings.sensitivity_metric
    if metric_kind == "auto":
        metric_kind = "lm" if wrapper_cls is LightTokenForCausalLM else "hidden_states"
    elif metric_kind == "lm" and wrapper_cls is not LightTokenForCausalLM:
        raise ValueError(
            f"sensitivity_metric='lm' needs a causal LM; {type(model).__name__} is not one "
            "(use 'hidden_states' or 'auto')"
        )
    sensitivity_info = {"calibration": "given matrix"}
    if settings.sensitivity_weighted and sensitivity is None and metric_kind == "lm":
        sensitivity, row_weights, sensitivity_info = _lm_metric(
            model, embedding, tokenizer, calibration_texts, freqs, scale, settings, progress
        )
        if row_weights is not None and settings.frequency_aware:
            freqs, source = row_weights, f"LM Fisher trace ({source})"
    elif settings.sensitivity_weighted and sensitivity is None:
        sensitivity, sensitivity_info = _model_sensitivity(
            model, tokenizer, calibration_texts, settings, progress
        )
    module, report = compress_matrix(
        embedding.weight,
        settings,
        frequencies=freqs,
        padding_idx=embedding.padding_idx,
        progress=progress,
        frequency_source=source,
        sensitivity=sensitivity,
        sensitivity_info=sensitivity_info,
    )
    nbytes_before = model_nbytes(model)
    output_layer = _output_layer_text(model, embedding)
    output_module = output_report = None
    untied = _untied_output(model, embedding)
    if untied is not None and settings.output_layer == "compress":
        same_rows = freqs is not None and freqs.numel() == untied.weight.shape[0]
        output_module, output_report = compress_matrix(
            untied.weight,
            settings,
            frequencies=freqs if same_rows else None,
            progress=progress,
            frequency_source=source if same_rows else "none",
        )
        report.output_dense_nbytes = output_report.dense_nbytes
        report.output_compressed_nbytes = output_report.compressed_nbytes
        report.output_fidelity = output_report.fidelity
        output_layer = (
            f"untied: compressed on its own, {output_report.ratio:.2f}x "
            f"({fmt_size(output_report.compressed_nbytes)}, counted in the ratio)"
        )
    replaced = [embedding.weight, untied.weight if output_module is not None else None]
    backbone = model if inplace else _copy_without(model, replaced)
    # the saved config names the base model by its Hub id, never by a local path
    record_base_model(backbone.config, getattr(model, "name_or_path", "") or model.config._name_or_path)
    attn_implementation = backbone.config._attn_implementation
    config = LightTokenConfig(
        backbone=backbone.config,
        num_embeddings=v,
        embedding_dim=embedding.embedding_dim,
        svd_rank=module.svd_rank,
        stage_bits=module.stage_bits,
        stage_rows=module.stage_rows,
        padding_idx=module.padding_idx,
        factor_dtype=settings.factor_dtype,
        decoder_dtype=settings.decoder_dtype,
        row_index=module.row_index,
        embedding_scale=scale,
        output_embedding=None
        if output_module is None
        else {
            "num_embeddings": output_module.num_embeddings,
            "embedding_dim": output_module.embedding_dim,
            "svd_rank": output_module.svd_rank,
            "stage_bits": list(output_module.stage_bits),
            "stage_rows": list(output_module.stage_rows),
            "factor_dtype": settings.factor_dtype,
            "decoder_dtype": settings.decoder_dtype,
            "row_index": output_module.row_index,
        },
        compression_stats=_jsonable(report.to_dict()),
    )
    wrapped = wrapper_cls(config, backbone=backbone)
    # building the wrapper re-resolves attention on the nested config: keep the backbone's choice
    wrapped.config._attn_implementation = attn_implementation
    wrapped.backbone.config._attn_implementation = attn_implementation
    module.output_dtype = embedding.weight.dtype
    module.output_scale = scale
    wrapped.set_input_embeddings(module.to(embedding.weight.device))
    if output_module is not None:
        output_module.output_dtype = untied.weight.dtype
        wrapped.get_output_embeddings().codec = output_module.to(untied.weight.device)
    report.output_layer = output_layer
    report.model_nbytes_before = nbytes_before
    report.model_nbytes_after = model_nbytes(wrapped)
    wrapped.config.compression_stats = _jsonable(report.to_dict())
    wrapped.compression_report = report
    wrapped.name_or_path = getattr(model, "name_or_path", "")
    return wrapped


def _copy_without(model: Any, weights: list[torch.Tensor | None]) -> Any:
    """A deep copy of ``model`` in which ``weights`` (the token matrices about to be replaced) are not copied.

    Each becomes a parameter of the same shape backed by one value (an expanded view), so a tied
    output layer stays tied to the same object and no V x d copy is made.
    """
    memo: dict[int, Any] = {}
    for weight in weights:
        if weight is not None:
            placeholder = torch.zeros(1, 1, dtype=weight.dtype, device=weight.device).expand(weight.shape)
            memo[id(weight)] = torch.nn.Parameter(placeholder, requires_grad=False)
    return copy.deepcopy(model, memo)


def _untied_output(model: Any, embedding: torch.nn.Embedding) -> torch.nn.Linear | None:
    """The model's output layer when it is an ``nn.Linear`` with its own V x d weight, else ``None``."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(output, torch.nn.Linear) or output.weight is embedding.weight:
        return None
    return output if output.weight.shape[1] == embedding.embedding_dim else None


def _output_layer_text(model: Any, embedding: torch.nn.Embedding) -> str | None:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(output, "weight", None)
    if weight is None:
        return None
    if weight is embedding.weight:
        return "tied: the compressed matrix computes the logits too (stored once)"
    nbytes = weight.numel() * weight.element_size()
    return f"untied: kept dense ({fmt_size(nbytes)}, not in the ratio above; the whole-model size counts it)"


def embedding_scale(embedding: torch.nn.Embedding) -> float:
    """The constant factor ``embedding``'s forward multiplies its lookups by (1.0 for a plain ``nn.Embedding``).

    Some architectures do more than look rows up inside the embedding module (Gemma's
    ``Gemma3TextScaledWordEmbedding`` multiplies by ``sqrt(hidden_size)``); the compressed embedding must
    do the same. The module is probed on a few ids: a forward equal to a constant times the lookup gives
    that constant; anything else is refused, since the compressed module could not reproduce it.
    """
    if type(embedding).forward is torch.nn.Embedding.forward:
        return 1.0
    ids = torch.arange(min(embedding.num_embeddings, 256), device=embedding.weight.device)
    with torch.no_grad():
        out = embedding(ids).double()
        lookup = torch.nn.functional.embedding(ids, embedding.weight).double()
    if tuple(out.shape) != tuple(lookup.shape):
        raise ValueError(
            f"{type(embedding).__name__}'s forward returns shape {tuple(out.shape)} for a lookup of shape "
            f"{tuple(lookup.shape)}; LightToken can only replace embeddings whose forward is a lookup times a "
            "constant"
        )
    scale = float((out * lookup).sum() / (lookup * lookup).sum().clamp_min(1e-300))
    tolerance = 1e-3 * float(out.abs().max()) + 1e-6
    if not math.isfinite(scale) or float((out - scale * lookup).abs().max()) > tolerance:
        raise ValueError(
            f"{type(embedding).__name__}'s forward does more than multiply the looked-up rows by a constant; "
            "LightToken cannot reproduce it in the compressed embedding"
        )
    return 1.0 if abs(scale - 1.0) < 1e-6 else scale


def _check_no_shared_embedding(model: Any, embedding: torch.nn.Module) -> None:
    """Refuse models that reuse the input-embedding weight elsewhere than in a tied output layer."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    sharers = [
        name
        for name, module in model.named_modules(remove_duplicate=False)
        if module is not embedding
        and module is not output
        and getattr(module, "weight", None) is embedding.weight
    ]
    if sharers:
        raise ValueError(
            f"{type(model).__name__} shares its input-embedding weight with {', '.join(sharers)} (encoder-decoder "
            "models such as T5 and BART tie their encoder and decoder embeddings this way); LightToken does not "
            "support shared input embeddings yet: compress a model with a single input embedding"
        )


def _wrapper_class(model: Any) -> type[LightTokenPreTrainedModel]:
    for auto_cls, wrapper in LIGHTTOKEN_CLASSES:
        try:
            found = auto_cls._model_mapping[type(model.config)]
        except (KeyError, AttributeError):
            continue
        if type(model) in (found if isinstance(found, (list, tuple)) else (found,)):
            return wrapper
    raise ValueError(
        f"{type(model).__name__} is not a model class that LightToken wraps; supported heads: "
        + ", ".join(w.__name__ for _, w in LIGHTTOKEN_CLASSES)
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
