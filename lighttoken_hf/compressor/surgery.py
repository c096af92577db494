"""Model surgery: which LightToken class wraps a model, what becomes of its output layer, the constant its
embedding multiplies by, and a copy of the model without the token matrices about to be replaced."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from ..core.modeling_lighttoken import LIGHTTOKEN_CLASSES, LightTokenPreTrainedModel
from .report import fmt_size

__all__ = [
    "check_no_shared_embedding",
    "copy_without",
    "embedding_scale",
    "output_layer_text",
    "untied_output",
    "wrapper_class",
]


def copy_without(model: Any, weights: list[torch.Tensor | None]) -> Any:
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


def untied_output(model: Any, embedding: torch.nn.Embedding) -> torch.nn.Linear | None:
    """The model's output layer when it is an ``nn.Linear`` with its own V x d weight, else ``None``."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(output, torch.nn.Linear) or output.weight is embedding.weight:
        return None
    return output if output.weight.shape[1] == embedding.embedding_dim else None


def output_layer_text(model: Any, embedding: torch.nn.Embedding) -> str | None:
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


def check_no_shared_embedding(model: Any, embedding: torch.nn.Module) -> None:
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


def wrapper_class(model: Any) -> type[LightTokenPreTrainedModel]:
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
