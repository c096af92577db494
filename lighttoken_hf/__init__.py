"""lighttoken-hf: compress the token-embedding matrix of any Transformers model with LightToken.

``import lighttoken_hf`` registers the ``lighttoken`` model type with transformers' Auto classes, so
``AutoModel.from_pretrained(path)`` loads compressed checkpoints.
"""

from transformers import AutoConfig

from .compressor.api import CompressionReport, CompressionSettings, compress
from .compressor.hashing import StageSchedule
from .compressor.planner import CompressionPlan, plan_for_ratio
from .core.configuration_lighttoken import LightTokenConfig
from .core.lighttoken_codec import LightTokenEmbedding, pack_bits, unpack_bits
from .core.modeling_lighttoken import (
    LIGHTTOKEN_CLASSES,
    LightTokenForCausalLM,
    LightTokenForMaskedLM,
    LightTokenForMultipleChoice,
    LightTokenForQuestionAnswering,
    LightTokenForSequenceClassification,
    LightTokenForTokenClassification,
    LightTokenLMHead,
    LightTokenModel,
    LightTokenPreTrainedModel,
)
from .training import LightTokenCallback, apply_embedding_policy

__version__ = "0.1.0"

def _register() -> None:
    AutoConfig.register(LightTokenConfig.model_type, LightTokenConfig, exist_ok=True)
    LightTokenConfig.register_for_auto_class()
    for auto_cls, model_cls in LIGHTTOKEN_CLASSES:  # one (Auto class, LightToken class) list, in the core
        auto_cls.register(LightTokenConfig, model_cls, exist_ok=True)
        model_cls.register_for_auto_class(auto_cls.__name__)


_register()

__all__ = [
    "CompressionPlan",
    "CompressionReport",
    "CompressionSettings",
    "LightTokenCallback",
    "LightTokenConfig",
    "LightTokenEmbedding",
    "LightTokenForCausalLM",
    "LightTokenForMaskedLM",
    "LightTokenForMultipleChoice",
    "LightTokenForQuestionAnswering",
    "LightTokenForSequenceClassification",
    "LightTokenForTokenClassification",
    "LightTokenLMHead",
    "LightTokenModel",
    "LightTokenPreTrainedModel",
    "StageSchedule",
    "apply_embedding_policy",
    "compress",
    "pack_bits",
    "plan_for_ratio",
    "unpack_bits",
]
