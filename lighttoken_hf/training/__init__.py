"""Fine-tuning helpers for LightToken-compressed models (``transformers.Trainer`` callback and pure helpers)."""

from .callback import (
    CALLBACK_STATE_FILENAME,
    EMBEDDING_POLICIES,
    EmbeddingPolicyCounts,
    LightTokenCallback,
    apply_embedding_policy,
    embedding_param_counts,
    embedding_storage_stats,
    lighttoken_embeddings,
    restore_embedding_storage,
    upcast_embedding_storage,
)

__all__ = [
    "CALLBACK_STATE_FILENAME",
    "EMBEDDING_POLICIES",
    "EmbeddingPolicyCounts",
    "LightTokenCallback",
    "apply_embedding_policy",
    "embedding_param_counts",
    "embedding_storage_stats",
    "lighttoken_embeddings",
    "restore_embedding_storage",
    "upcast_embedding_storage",
]
