"""Configuration of a LightToken-compressed model (ships with checkpoints as remote code).

A :class:`LightTokenConfig` nests the backbone's own configuration (``backbone``, a sub-config, so
``dtype=`` / ``attn_implementation=`` passed to ``from_pretrained`` reach it) and the shapes of the
compressed input embedding, plus the measured compression statistics.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec


class LightTokenConfig(PretrainedConfig):
    """Config of a model whose input token-embedding matrix is LightToken-compressed.

    Args:
        backbone: the uncompressed model's config (a ``PretrainedConfig`` or its dict).
        num_embeddings: vocabulary size V of the compressed embedding.
        embedding_dim: embedding width d.
        svd_rank: rank of the low-rank part.
        stage_bits: code bits of each hashing stage.
        stage_rows: rows covered by each stage (most frequent tokens first).
        padding_idx: padding row, stored exactly (``None`` for none).
        factor_dtype: storage dtype of low-rank factors and decoders (``"float16"``...).
        compression_stats: measured facts (real ratio and bytes, fidelity metrics, settings).
    """

    model_type = "lighttoken"
    sub_configs_defaults = {"backbone": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    backbone: PretrainedConfig | dict | None = None
    num_embeddings: int = 0
    embedding_dim: int = 0
    svd_rank: int = 0
    stage_bits: list[int] | None = None
    stage_rows: list[int] | None = None
    padding_idx: int | None = None
    factor_dtype: str = "float16"
    compression_stats: dict[str, Any] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.stage_bits = list(self.stage_bits or [])
        self.stage_rows = list(self.stage_rows or [])
        self.compression_stats = dict(self.compression_stats or {})
        if len(self.stage_bits) != len(self.stage_rows):
            raise ValueError(
                f"stage_bits ({len(self.stage_bits)} stages) and stage_rows ({len(self.stage_rows)}) must match"
            )
        super().__post_init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        """The backbone's text config: generation, pipelines and PEFT read vocab/hidden sizes from it."""
        return self.backbone.get_text_config(*args, **kwargs)
