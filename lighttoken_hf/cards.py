"""Model cards for LightToken checkpoints.

:func:`model_card` renders ``lighttoken_hf/templates/lighttoken_model_card.md.jinja`` through huggingface_hub's
``ModelCard.from_template``: base model, method and settings, real ratio and bytes, fidelity and
end-to-end metrics, ``model-index`` evaluation results when given, usage, fine-tuning, limitations and
citation. :func:`card_facts` computes the facts the card shows; ``lighttoken info`` prints the same rows
(``facts["sections"]``), so the card and the command line never disagree.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import checkpoint_facts
from .compressor.provenance import hub_model_id
from .compressor.report import END_TO_END_LABELS, FIDELITY_LABELS, fmt_size
from .compressor.settings import BACKBONE_LIBRARIES

__all__ = [
    "CARD_TAGS",
    "FIDELITY_LABELS",
    "SENTENCE_TRANSFORMERS_TAG",
    "TEMPLATE_NAME",
    "card_facts",
    "default_model_name",
    "fmt_size",
    "hub_model_id",
    "model_card",
    "template_text",
]

TEMPLATE_NAME = "lighttoken_model_card.md.jinja"
#: Tags every LightToken card carries in its metadata.
CARD_TAGS = ("lighttoken", "embedding-compression")
#: Extra tag of a checkpoint saved as a sentence-transformers model (it has ``modules.json``).
SENTENCE_TRANSFORMERS_TAG = "sentence-transformers"

#: The Hub pipeline tag of each Auto class a LightToken class loads with (the classes: the core's
#: ``LIGHTTOKEN_CLASSES``); an Auto class without one gets no tag.
_PIPELINE_TAGS = {
    "AutoModel": "feature-extraction",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForQuestionAnswering": "question-answering",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForCausalLM": "text-generation",
}
_LOSS_DESCRIPTIONS = {
    "cosine_bound": "an upper bound of the squared Euclidean error that weights the angle between a row "
    "and its reconstruction more than MSE does",
    "mse": "mean squared error",
    "cosine": "cosine distance only",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
_PLACEHOLDER_REPO = "path/to/this-checkpoint"


# ------------------------------------------------------------------------------------------ formatting
def _fmt_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("\n", "\\n").replace("|", "\\|")  # one table cell: no line breaks or bars


def _fmt_bytes(nbytes: int) -> str:
    return f"{nbytes:,} bytes ({fmt_size(nbytes)})"


def _fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x"


def _fmt_target(value: float) -> str:
    return f"{value:g}x"


# ------------------------------------------------------------------------------------------ sources
def _auto_class_name(model_class: str) -> str:
    """The Auto class that loads the LightToken class named ``model_class`` (``AutoModel`` if unknown)."""
    from .core.modeling_lighttoken import LIGHTTOKEN_CLASSES

    return next((auto.__name__ for auto, cls in LIGHTTOKEN_CLASSES if cls.__name__ == model_class), "AutoModel")


def _whole_model_rows(report: Mapping, quantization: str | None) -> list[tuple[str, str]]:
    """The whole model's stored bytes, its ratios to fp32 and bf16 and each part's share (when recorded)."""
    after, fp32 = report.get("model_nbytes_after"), report.get("model_fp32_nbytes")
    if not after:
        return []
    text = _fmt_bytes(after)
    if fp32:
        text += f" ({fp32 / after:.2f}x smaller than fp32, {fp32 / 2 / after:.2f}x than bf16)"
    rows = [("whole model", text)]
    parts = report.get("model_parts_after") or {}
    if parts:
        shares = ", ".join(f"{name.replace('_', ' ')} {n / after:.0%}" for name, n in parts.items())
        rows.append(("parts of the whole model", shares))
    backbone = f"{quantization} weights ({BACKBONE_LIBRARIES[quantization]} weight-only)" if quantization else (
        "as in the base model")  # fmt: skip
    rows.append(("backbone Linear layers", backbone))
    if report.get("backbone_rounding"):
        rows.append(("int4 rounding", report["backbone_rounding"]))
    return rows


def _storage_text(factor_dtype: str, decoder_dtype: str) -> str:
    if decoder_dtype == factor_dtype:
        return f"bit-packed codes, {factor_dtype} factors and decoders"
    if decoder_dtype == "int8":
        return f"bit-packed codes, {factor_dtype} factors, int8 decoders with a {factor_dtype} scale per code bit"
    return f"bit-packed codes, {factor_dtype} factors, {decoder_dtype} decoders"


def _tokenizer_class(folder: str | None) -> str:
    """The transformers class of the checkpoint's tokenizer (its ``tokenizer_config.json``).

    The card names it instead of ``AutoTokenizer``: transformers 5's ``AutoTokenizer`` reads the model's
    ``config.json`` first, which for a LightToken checkpoint asks to run remote code; the concrete class does not.
    """
    import transformers

    name = None
    if folder is not None:
        try:
            config = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
            name = config.get("tokenizer_class") if isinstance(config, dict) else None
        except (OSError, ValueError, UnicodeDecodeError):
            name = None
    if isinstance(name, str) and name.isidentifier() and hasattr(transformers, name):
        return name
    return "PreTrainedTokenizerFast"


# ------------------------------------------------------------------------------------------ facts
def _bits_per_token(
    stage_bits: Sequence[int], stage_rows: Sequence[int], vocab: int
) -> list[tuple[int, int]]:
    """(number of tokens, code bits each) tiers, most frequent tokens first."""
    bounds = sorted({int(r) for r in stage_rows} | {int(vocab)})
    tiers, start = [], 0
    for bound in bounds:
        if bound <= start:
            continue
        bits = sum(int(b) for b, rows in zip(stage_bits, stage_rows) if start < int(rows))
        if tiers and tiers[-1][1] == bits:
            tiers[-1] = (tiers[-1][0] + bound - start, bits)
        else:
            tiers.append((bound - start, bits))
        start = bound
    return tiers


def _bits_text(tiers: list[tuple[int, int]]) -> str:
    if not tiers:
        return "n/a"
    if len(tiers) == 1:
        return f"{tiers[0][1]} for every token"
    parts = [f"{tiers[0][1]} for the {tiers[0][0]:,} most frequent tokens"]
    parts += [f"{bits} for the next {count:,}" for count, bits in tiers[1:-1]]
    parts.append(f"{tiers[-1][1]} for the other {tiers[-1][0]:,}")
    return ", ".join(parts)


def _frequency_text(settings: Mapping, plan_notes: Mapping, source: str | None) -> tuple[bool, str]:
    applied = plan_notes.get("frequency_aware")
    if applied is None:
        applied = bool(source) and source != "none"
    if applied:
        share = settings.get("frequency_share")
        share = plan_notes.get("frequency_share", share) if share is None else share
        decay = settings.get("tier_decay")
        text = "on: extra hashing stages cover only the most frequent tokens"
        if isinstance(share, (int, float)):
            text += f" ({share:.0%} of the code bytes"
            text += f", each tier covering {decay:g} of the previous tier's rows)" if decay else ")"
        if source and source != "none":
            text += f"; token frequencies: {source}"
        return True, text
    if settings.get("frequency_aware"):
        return False, "off (requested, but no token frequencies were available)"
    if not settings:
        return False, "unknown (no compression report found)"
    return False, "off: every token gets the same code bits"


def _sensitivity_text(settings: Mapping, info: Mapping | None) -> str:
    if info:
        text = "on: the error is measured in the model's own sensitivity metric"
        if info.get("calibration"):
            text += f" (measured on {info['calibration']}"
            text += (
                f", shrinkage {info['shrinkage']:g})"
                if isinstance(info.get("shrinkage"), (int, float))
                else ")"
            )
        return text
    if settings.get("sensitivity_weighted"):
        return "off (requested, but the metric could not be measured)"
    if "sensitivity_weighted" not in settings:
        return (
            "off (compressed before the metric existed)"
            if settings
            else "unknown (no compression report found)"
        )
    return "off: plain Euclidean error"


def card_facts(model_or_dir: Any, *, base_model: str | None = None, report: Any = None) -> dict:
    """The facts a LightToken card shows, for a compressed model or a saved checkpoint folder.

    Args:
        model_or_dir: a LightToken model (from :func:`lighttoken_hf.compress` or ``from_pretrained``) or
            the folder of a saved checkpoint (read with :func:`lighttoken_hf.saving.checkpoint_info`, no
            weights are loaded).
        base_model: Hub id of the uncompressed model (default: the recorded ``name_or_path`` of the
            backbone when it is a Hub id; local paths are left out).
        report: use this compression report (a ``CompressionReport`` or dict) instead of the recorded one.

    Raises:
        ValueError: ``base_model`` is not a Hub model id.

    Returns:
        A dict of raw values (``ratio``, ``compressed_nbytes``, ``stage_bits``, ...) plus ``sections``:
        ``{"model" | "size" | "method" | "fidelity" | "end_to_end": [(label, text), ...]}``, the rows of the
        card's tables, which ``lighttoken info`` prints too.
    """
    info = checkpoint_facts(model_or_dir, report)
    base, plan, report_data = info["base_model"], info["plan"], info["report"] or {}
    settings = report_data.get("settings") or {}
    plan_notes = (report_data.get("plan") or {}).get("notes") or {}
    model_class = (info["architectures"] or ["LightTokenModel"])[0]
    auto_class = _auto_class_name(model_class)
    pipeline_tag = _PIPELINE_TAGS.get(auto_class)
    vocab, dim = plan["num_embeddings"], plan["embedding_dim"]
    stage_bits = [int(b) for b in plan["stage_bits"] or []]
    stage_rows = [int(r) for r in plan["stage_rows"] or []]
    svd_rank = plan["svd_rank"] or 0
    factor_dtype = plan["factor_dtype"] or "float16"
    decoder_dtype = plan.get("decoder_dtype") or factor_dtype
    if base_model is not None and hub_model_id(base_model) is None:
        raise ValueError(
            f"base_model must be a Hugging Face Hub model id such as 'org/name', got {base_model!r}"
        )
    base_id = base_model or hub_model_id(base["name_or_path"])

    dense, stored = report_data.get("dense_nbytes"), report_data.get("compressed_nbytes")
    bias_nbytes = report_data.get("output_bias_nbytes") or 0
    stored = stored + bias_nbytes if stored else stored
    ratio = report_data.get("ratio") or (dense / stored if dense and stored else None)
    target = plan_notes.get("target_ratio") or settings.get("ratio")
    budget = plan_notes.get("budget_bytes") if settings.get("budget_bytes") is not None else None
    frequency_aware, frequency_text = _frequency_text(
        settings, plan_notes, report_data.get("frequency_source")
    )
    tiers = _bits_per_token(stage_bits, stage_rows, vocab) if stage_bits and vocab else []
    schedule = settings.get("schedule") or {}

    embedding_text = f"{vocab:,} x {dim:,}" if vocab and dim else "?"
    arch = ", ".join(base["architectures"]) or "?"
    if base_id:
        base_text = f"{base_id} ({base['model_type']}, {arch})"
    elif base["name_or_path"]:
        base_text = f"{base['model_type']} ({arch}) from {base['name_or_path']}"
    else:
        base_text = f"{base['model_type']} ({arch})"

    model_rows = [("base model", base_text), ("model class", model_class), ("embedding", embedding_text)]
    if report_data.get("output_layer"):
        model_rows.append(("output layer", report_data["output_layer"]))
    if ratio:
        ratio_text = _fmt_ratio(ratio)
        if budget:
            ratio_text += f" (budget {budget:,} bytes)"
        elif target:
            ratio_text += f" (target {_fmt_target(target)})"
        size_rows = [
            ("real ratio", ratio_text),
            ("compressed embedding", _fmt_bytes(stored)),
            ("fp32 dense embedding", _fmt_bytes(dense)),
        ]
        if bias_nbytes:
            size_rows.insert(2, ("of which output logit bias", f"{_fmt_bytes(bias_nbytes)} (one per token)"))
    else:
        size_rows = [("real ratio", "unknown (no compression report found)")]
    size_rows += _whole_model_rows(report_data, settings.get("quantize_backbone"))

    if stage_bits:
        plural = "s" if len(stage_bits) != 1 else ""
        stages_text = f"{len(stage_bits)} stage{plural}: " + " + ".join(str(b) for b in stage_bits) + " bits"
        rows_text = " / ".join(f"{r:,}" for r in stage_rows) + " (most frequent tokens first)"
    else:
        stages_text, rows_text = "0 (low-rank part only)", "n/a"
    method_rows = [
        ("SVD rank", f"{svd_rank} ({factor_dtype} factors)" if svd_rank else "0 (no low-rank part)"),
        ("hashing stages", stages_text),
        ("rows per stage", rows_text),
        ("code bits per token", _bits_text(tiers)),
        ("loss", settings.get("loss") or "unknown"),
        ("frequency-aware allocation", frequency_text),
        ("sensitivity metric", _sensitivity_text(settings, report_data.get("sensitivity"))),
        ("storage", _storage_text(factor_dtype, decoder_dtype)),
    ]
    if settings:
        training = f"seed {settings.get('seed')}"
        if schedule.get("max_epochs") is not None:
            training += f", up to {schedule['max_epochs']} epochs per stage"
        if schedule.get("refine_sweeps") is not None:
            training += f", {schedule['refine_sweeps']} bit-refinement sweeps"
        if settings.get("joint_iterations"):
            training += f", {settings['joint_iterations']} rounds of joint refinement of all stages"
        method_rows.append(("training", training))

    fidelity = report_data.get("fidelity") or {}
    fidelity_rows = [
        (FIDELITY_LABELS.get(k, k.replace("_", " ")), _fmt_value(v)) for k, v in fidelity.items()
    ]
    end_to_end = report_data.get("end_to_end") or {}
    e2e_rows = [
        (END_TO_END_LABELS.get(k, k.replace("_", " ")), _fmt_value(v)) for k, v in end_to_end.items()
    ]

    summary = [
        f"{FIDELITY_LABELS[k]} {_fmt_value(fidelity[k])}"
        for k in ("mean_row_cosine", "rel_error")
        if k in fidelity
    ]
    return {
        "path": info["path"],
        "model_class": model_class,
        "auto_class": auto_class,
        "pipeline_tag": pipeline_tag,
        "backbone_quantization": settings.get("quantize_backbone"),
        "backbone_library": BACKBONE_LIBRARIES.get(settings.get("quantize_backbone")),
        "base": base,
        "base_model_id": base_id,
        "num_embeddings": vocab,
        "embedding_dim": dim,
        "embedding_text": embedding_text,
        "svd_rank": svd_rank,
        "factor_dtype": factor_dtype,
        "decoder_dtype": decoder_dtype,
        "stage_bits": stage_bits,
        "stage_rows": stage_rows,
        "stages": [
            {"index": i + 1, "bits": b, "rows": r, "rows_text": f"{r:,}"}
            for i, (b, r) in enumerate(zip(stage_bits, stage_rows))
        ],
        "bits_per_token": tiers,
        "loss": settings.get("loss"),
        "loss_description": _LOSS_DESCRIPTIONS.get(settings.get("loss")),
        "frequency_aware": frequency_aware,
        "frequency_text": frequency_text,
        "ratio": ratio,
        "ratio_text": _fmt_ratio(ratio) if ratio else "by an unknown ratio",
        "target_ratio": target,
        "compressed_nbytes": stored,
        "dense_nbytes": dense,
        "fidelity": fidelity,
        "fidelity_summary": ", ".join(summary) or "no fidelity recorded",
        "end_to_end": end_to_end,
        "sentences": end_to_end.get("sentences"),
        "has_tokenizer": any(name in info["files"] for name in _TOKENIZER_FILES),
        "tokenizer_class": _tokenizer_class(info["path"]),
        "sentence_transformers_modules": list(info.get("sentence_transformers_modules") or []),
        "report": report_data,
        "report_source": info["report_source"],
        "files": info["files"],
        "sections": {
            "model": model_rows,
            "size": size_rows,
            "method": method_rows,
            "fidelity": fidelity_rows,
            "end_to_end": e2e_rows,
        },
    }


# ------------------------------------------------------------------------------------------ card
def template_text() -> str:
    """The card template shipped in the package (``lighttoken_hf/templates/``)."""
    resource = importlib.resources.files("lighttoken_hf").joinpath("templates", TEMPLATE_NAME)
    return resource.read_text(encoding="utf-8")


def default_model_name(facts: Mapping, repo_id: str | None = None) -> str:
    """The card title: the repo name if known, else ``<base>-lighttoken-<ratio>x``."""
    if repo_id:
        return repo_id.rstrip("/").split("/")[-1]
    base = facts["base_model_id"] or facts["base"]["model_type"] or "model"
    base = base.split("/")[-1]
    return f"{base}-lighttoken-{facts['ratio']:.0f}x" if facts["ratio"] else f"{base}-lighttoken"


def _eval_rows(eval_results: Sequence[Any]) -> list[dict]:
    rows = []
    for result in eval_results:
        rows.append(
            {
                "task": result.task_name or result.task_type,
                "dataset": result.dataset_name or result.dataset_type,
                "split": result.dataset_split or "",
                "metric": result.metric_name or result.metric_type,
                "value": str(result.metric_value),
            }
        )
    return rows


def model_card(
    model_or_dir: Any,
    *,
    base_model: str | None = None,
    eval_results: Any = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    report: Any = None,
):
    """Build the model card (a ``huggingface_hub.ModelCard``) of a LightToken model or saved checkpoint.

    Args:
        model_or_dir: a LightToken model or the folder of a saved checkpoint.
        base_model: Hub id of the uncompressed model, for the card metadata (``base_model``) and links.
            Default: the backbone's recorded ``name_or_path`` when it is a Hub id (local paths are left out).
        eval_results: a ``huggingface_hub.EvalResult`` or a list of them, written to the ``model-index``
            metadata and as a table.
        repo_id: the Hub repo the card is for; used in the code snippets (default: a placeholder).
        model_name: card title and ``model-index`` name (default: the repo name, else
            ``<base>-lighttoken-<ratio>x``).
        report: a compression report to show instead of the recorded one.

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(path)`` writes it, ``card.push_to_hub(repo_id)``
        uploads it.

    Raises:
        ValueError: ``base_model`` is not a Hub model id.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from . import __version__

    facts = card_facts(model_or_dir, base_model=base_model, report=report)
    if isinstance(eval_results, EvalResult):
        eval_results = [eval_results]
    eval_results = list(eval_results or [])
    name = model_name or default_model_name(facts, repo_id)
    card_data = ModelCardData(
        base_model=facts["base_model_id"],
        library_name="transformers",
        pipeline_tag=facts["pipeline_tag"],
        tags=[*CARD_TAGS, *([SENTENCE_TRANSFORMERS_TAG] if facts["sentence_transformers_modules"] else [])],
        model_name=name,
        eval_results=eval_results or None,
    )
    variables = {key: value for key, value in facts.items() if key != "report"}
    return ModelCard.from_template(
        card_data,
        template_str=template_text(),
        **variables,
        model_name=name,
        repo_id=repo_id,
        repo_ref=repo_id or _PLACEHOLDER_REPO,
        eval_rows=_eval_rows(eval_results),
        version=__version__,
    )
