"""lighttoken-hf: compress the token-embedding matrix of any Transformers model with LightToken.

``import lighttoken_hf`` registers the ``lighttoken`` model type with transformers' Auto classes, so
``AutoModel.from_pretrained(path)`` loads compressed checkpoints. The public names below are imported on
first use; the ``lighttoken`` command line defers the registration until it runs a command, so that its
``--help`` starts without importing torch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "CompressionPlan": ".compressor.planner",
    "plan_for_ratio": ".compressor.planner",
    "CompressionReport": ".compressor.report",
    "CompressionSettings": ".compressor.settings",
    "compress": ".compressor.api",
    "StageSchedule": ".compressor.settings",
    "LightTokenConfig": ".core.configuration_lighttoken",
    "LightTokenEmbedding": ".core.lighttoken_codec",
    "pack_bits": ".core.lighttoken_codec",
    "unpack_bits": ".core.lighttoken_codec",
    **{
        name: ".core.modeling_lighttoken"
        for name in (
            "LIGHTTOKEN_CLASSES",
            "LightTokenForCausalLM",
            "LightTokenForMaskedLM",
            "LightTokenForMultipleChoice",
            "LightTokenForQuestionAnswering",
            "LightTokenForSequenceClassification",
            "LightTokenForTokenClassification",
            "LightTokenLMHead",
            "LightTokenModel",
            "LightTokenPreTrainedModel",
        )
    },
    "LightTokenCallback": ".training",
    "apply_embedding_policy": ".training",
}

__all__ = sorted(name for name in _EXPORTS if name != "LIGHTTOKEN_CLASSES") + ["register"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


_registered = False


def register() -> None:
    """Register the ``lighttoken`` model type and classes with transformers' Auto classes (idempotent).

    Runs on ``import lighttoken_hf``; call it yourself only where the registration was deferred.
    """
    global _registered
    if _registered:
        return
    from transformers import AutoConfig

    from .core.configuration_lighttoken import LightTokenConfig
    from .core.modeling_lighttoken import LIGHTTOKEN_CLASSES

    AutoConfig.register(LightTokenConfig.model_type, LightTokenConfig, exist_ok=True)
    LightTokenConfig.register_for_auto_class()
    for auto_cls, model_cls in LIGHTTOKEN_CLASSES:  # one (Auto class, LightToken class) list, in the core
        auto_cls.register(LightTokenConfig, model_cls, exist_ok=True)
        model_cls.register_for_auto_class(auto_cls.__name__)
    _registered = True


if os.environ.get("_LIGHTTOKEN_HF_DEFER_REGISTRATION") != "1":
    register()
