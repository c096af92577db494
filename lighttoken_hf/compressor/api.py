"""The one verb: :func:`compress` a model's input embeddings (or a bare matrix) with LightToken.

It measures the model's error metric, compresses the matrix (:mod:`.pipeline`), wraps the backbone in the
matching LightToken class (:mod:`.surgery`) and, given evaluation texts, compares it with the original end
to end: one :class:`~.report.CompressionReport`, produced once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..core.configuration_lighttoken import LightTokenConfig
from ..core.modeling_lighttoken import LightTokenForCausalLM, LightTokenPreTrainedModel
from ..jsonio import to_json
from .backbone import (
    INT4_VALUE_BITS,
    calibration_batches,
    check_backbone,
    quantize_backbone,
    value_projections,
)
from .calibration import backbone_calibration_texts
from .frequencies import general_text_frequencies, general_text_samples
from .lm_metrics import is_lm, lm_fidelity
from .lm_sensitivity import lm_sensitivity, output_logit_bias
from .metrics import sentence_embedding_cosine
from .pipeline import compress_matrix, plan_for_settings
from .planner import budget_for_ratio
from .provenance import record_base_model
from .report import fmt_size, model_parts_nbytes
from .sensitivity import embedding_sensitivity
from .settings import OUTPUT_BIAS_MAX_SHARE, CompressionSettings
from .surgery import (
    check_no_shared_embedding,
    copy_without,
    embedding_scale,
    output_layer_text,
    untied_output,
    wrapper_class,
)
from .tokenizers import check_tokenizer, model_tokenizer
from .validation import check_matrix

logger = logging.getLogger(__name__)

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
    output_means: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict, torch.Tensor | None]:
    """The LM metric and row weights (:func:`lm_sensitivity`) on ``texts``, timed, and for a tied output
    layer with ``output_means`` each row's weighted mean final hidden state (else ``None``).

    The default calibration text is that of the encoder metric (wordfreq pseudo-sentences): general
    text, and not the builtin sentences on which the CLI reports perplexity.
    """
    if tokenizer is None:
        logger.warning("no tokenizer given or found: the LM metric is off (pass tokenizer=)")
        return None, None, {}, None
    start = time.perf_counter()
    source = "given texts" if texts is not None else "wordfreq pseudo-sentences"
    texts = list(texts) if texts is not None else general_text_samples(seed=settings.seed)
    output = model.get_output_embeddings()
    tied = getattr(output, "weight", None) is embedding.weight
    metric, weights, info, *rest = lm_sensitivity(
        model, tokenizer, texts, input_frequencies=frequencies, input_scale=scale, tied_output=tied,
        seed=settings.seed, progress=progress, output_means=tied and output_means,
    )  # fmt: skip
    means = rest[0] if rest else None  # with output_means
    info = {"calibration": source, "metric": "lm", **info, "seconds": time.perf_counter() - start}
    return metric, weights, info, means


def _backbone_calibration_texts(
    model: Any, tokenizer: Any, texts: list[str] | None, settings: CompressionSettings, progress: bool
) -> tuple[list[str] | None, str | None]:
    """The texts int4's error-compensating rounding reads and how the levels are chosen, in words
    (``None, None``: no int4 backbone; ``None, ...``: no tokenizer, nearest level)."""
    if settings.quantize_backbone != "int4":
        return None, None
    if tokenizer is None:
        logger.warning("no tokenizer given or found: int4 rounds to nearest (pass tokenizer= to calibrate it)")
        return None, "nearest level (no tokenizer to calibrate with)"
    texts, source = backbone_calibration_texts(model, tokenizer, texts, seed=settings.seed, progress=progress)
    return texts, f"GPTQ on {source}"


def compress(
    model_or_matrix: Any,
    settings: CompressionSettings | float | None = None,
    *,
    tokenizer: Any = None,
    token_frequencies: torch.Tensor | None = None,
    calibration_texts: Any = None,
    sensitivity: torch.Tensor | None = None,
    evaluation_texts: Sequence[str] | None = None,
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
        calibration_texts: texts on which the model's sensitivity metric (and, with
            ``quantize_backbone="int4"``, the backbone layers' inputs for its rounding) is measured (default:
            256 pseudo-sentences of words drawn by their general-English frequency, task-agnostic; an int4
            backbone of a causal LM reads 128 texts the model writes itself as well, see ``calibration.py``).
        sensitivity: a precomputed d x d metric (:func:`embedding_sensitivity`) instead; the only way
            to use the metric when compressing a bare tensor.
        evaluation_texts: for a model, texts on which the compressed model is compared with the original
            end to end (a language model: perplexity, next-token KL, top-1 agreement and a greedy sample;
            any other model: the mean cosine of mean-pooled sentence embeddings), in the report's
            ``end_to_end`` (default: not measured).
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
    if evaluation_texts is not None:
        evaluation_texts = _check_texts(evaluation_texts, inplace, isinstance(model_or_matrix, torch.Tensor))
    if isinstance(model_or_matrix, torch.Tensor):
        check_tokenizer(tokenizer, check_matrix(model_or_matrix).shape[0])
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
        evaluation_texts,
        progress,
        inplace,
    )


def _check_texts(texts: Any, inplace: bool, bare_matrix: bool) -> list[str]:
    """``evaluation_texts`` as a list of non-empty strings (an end-to-end check needs the original model)."""
    if bare_matrix:
        raise ValueError("evaluation_texts needs a model: a bare matrix has no end-to-end output to compare")
    if inplace:
        raise ValueError(
            "evaluation_texts compares the compressed model with the original, which inplace=True replaces: "
            "pass inplace=False"
        )
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("evaluation_texts must be a list of strings")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("evaluation_texts holds no non-empty text")
    return texts


def end_to_end_fidelity(original: Any, compressed: Any, tokenizer: Any, texts: Sequence[str]) -> dict[str, Any]:
    """How close ``compressed`` stays to ``original`` on ``texts``: :func:`~.lm_metrics.lm_fidelity` for a
    language model, else the sentence-embedding cosine (:func:`~.metrics.sentence_embedding_cosine`)."""
    if is_lm(original):
        logger.info("measuring perplexity, next-token KL and top-1 agreement on %d texts", len(texts))
        return lm_fidelity(original, compressed, tokenizer, texts)
    logger.info("measuring the end-to-end sentence-embedding cosine on %d sentences", len(texts))
    cosine = sentence_embedding_cosine(original, compressed, tokenizer, texts)
    return {"sentence_embedding_cosine": cosine, "sentences": len(texts)}


def _compress_model(
    model: Any,
    settings: CompressionSettings,
    tokenizer: Any,
    token_frequencies: Any,
    calibration_texts: Any,
    sensitivity: torch.Tensor | None,
    evaluation_texts: list[str] | None,
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
    wrapper_cls = wrapper_class(model)
    if settings.quantize_backbone is not None:
        check_backbone(model, settings.quantize_backbone)
    check_no_shared_embedding(model, embedding)
    scale = embedding_scale(embedding)
    v = embedding.num_embeddings
    # an unreachable target fails now, before the tokenizer, frequencies and metric are computed
    plan_for_settings(
        v,
        embedding.embedding_dim,
        settings,
        frequency_aware=False,
        has_padding_row=embedding.padding_idx is not None,
    )
    if calibration_texts is not None:  # read by the metric and again by int4's rounding
        calibration_texts = list(calibration_texts)
    needs_tokenizer = (
        settings.quantize_backbone == "int4"
        or (settings.frequency_aware and token_frequencies is None)
        or (settings.sensitivity_weighted and sensitivity is None)
        or evaluation_texts is not None
    )
    tokenizer = model_tokenizer(model, tokenizer) if needs_tokenizer else tokenizer
    check_tokenizer(tokenizer, v)
    if evaluation_texts is not None and tokenizer is None:
        raise ValueError("evaluation_texts needs the model's tokenizer: pass tokenizer=")
    backbone_texts, backbone_source = _backbone_calibration_texts(
        model, tokenizer, calibration_texts, settings, progress
    )
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
    output_means = None
    # the output logit bias (measured with the LM metric) is stored beside the codes, within the same budget
    bias_dtype = getattr(torch, settings.factor_dtype)
    total = settings.budget_bytes or budget_for_ratio(v * embedding.embedding_dim * 4, settings.ratio)
    bias_share = v * bias_dtype.itemsize / total
    want_bias = settings.output_bias if settings.output_bias is not None else bias_share <= OUTPUT_BIAS_MAX_SHARE
    if settings.sensitivity_weighted and sensitivity is None and metric_kind == "lm":
        sensitivity, row_weights, sensitivity_info, output_means = _lm_metric(
            model, embedding, tokenizer, calibration_texts, freqs, scale, settings, progress, want_bias
        )
        if row_weights is not None and settings.frequency_aware:
            freqs, source = row_weights, f"LM Fisher trace ({source})"
    elif settings.sensitivity_weighted and sensitivity is None:
        sensitivity, sensitivity_info = _model_sensitivity(
            model, tokenizer, calibration_texts, settings, progress
        )
    bias_nbytes = v * bias_dtype.itemsize if output_means is not None else 0
    if settings.output_bias is None and not want_bias:
        logger.info("no output logit bias: it would take %.1f%% of the budget", 100 * bias_share)
    codec_settings = settings.replace(budget_bytes=total - bias_nbytes) if bias_nbytes else settings
    module, report = compress_matrix(
        embedding.weight,
        codec_settings,
        frequencies=freqs,
        padding_idx=embedding.padding_idx,
        progress=progress,
        frequency_source=source,
        sensitivity=sensitivity,
        sensitivity_info=sensitivity_info,
    )
    report.settings = settings.to_dict()
    logit_bias = None
    if bias_nbytes:
        logit_bias = output_logit_bias(embedding.weight.detach(), module.decode_rows, output_means).to(bias_dtype)
        report.output_bias_nbytes = bias_nbytes
        notes = report.plan["notes"]  # the budget is that of everything stored, the bias included
        notes.update(budget_bytes=total, target_ratio=report.dense_nbytes / total, output_bias_bytes=bias_nbytes)
    # measured before anything changes: with inplace=True the given model becomes the compressed one
    parts_before = model_parts_nbytes(model)
    fp32_before = 4 * sum(p.numel() for p in model.parameters() if p.is_floating_point())
    output_layer = output_layer_text(model, embedding)
    output_module = output_report = None
    untied = untied_output(model, embedding)
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
    backbone = model if inplace else copy_without(model, replaced)
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
        output_bias=logit_bias is not None,
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
        compression_stats=to_json(report.to_dict()),
    )
    wrapped = wrapper_cls(config, backbone=backbone)
    # building the wrapper re-resolves attention on the nested config: keep the backbone's choice
    wrapped.config._attn_implementation = attn_implementation
    wrapped.backbone.config._attn_implementation = attn_implementation
    module.output_dtype = embedding.weight.dtype
    module.output_scale = scale
    wrapped.set_input_embeddings(module.to(embedding.weight.device))
    if logit_bias is not None:
        with torch.no_grad():
            wrapped.get_output_embeddings().logit_bias.copy_(logit_bias)
    if output_module is not None:
        output_module.output_dtype = untied.weight.dtype
        wrapped.get_output_embeddings().codec = output_module.to(untied.weight.device)
    if settings.quantize_backbone is not None:
        device = next(wrapped.parameters()).device
        calibration = calibration_batches(tokenizer, backbone_texts, device=device) if backbone_texts else None
        wrapped = quantize_backbone(wrapped, settings.quantize_backbone, calibration, progress=progress)
        report.backbone_rounding = backbone_source
        wider = value_projections(wrapped) if settings.quantize_backbone == "int4" else []
        if wider:
            report.backbone_rounding += f"; grouped-query value projections in int{INT4_VALUE_BITS}: {len(wider)}"
    report.output_layer = output_layer
    report.model_parts_before, report.model_parts_after = parts_before, model_parts_nbytes(wrapped)
    report.model_nbytes_before = sum(parts_before.values())
    report.model_nbytes_after = sum(report.model_parts_after.values())
    report.model_fp32_nbytes = fp32_before
    wrapped.name_or_path = getattr(model, "name_or_path", "")
    if evaluation_texts is not None:
        report.end_to_end.update(end_to_end_fidelity(model, wrapped, tokenizer, evaluation_texts))
    wrapped.config.compression_stats = to_json(report.to_dict())
    wrapped.compression_report = report
    return wrapped


