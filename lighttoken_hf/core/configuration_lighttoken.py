"""Configuration of a LightToken-compressed model (ships with checkpoints as remote code).

A :class:`LightTokenConfig` nests the backbone's own configuration (``backbone``, a sub-config, so
``dtype=`` / ``attn_implementation=`` passed to ``from_pretrained`` reach it) and the shapes of the
compressed input embedding, plus the measured compression statistics.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

#: Label settings that ``from_pretrained`` keyword arguments pass on to the backbone config (in this order).
_LABEL_KEYS = ("num_labels", "id2label", "label2id", "problem_type")


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
        factor_dtype: storage dtype of the low-rank factors, decoder biases and scales (``"float16"``...).
        decoder_dtype: storage dtype of the decoder weights (``"int8"``, one scale per code bit, or a float
            dtype).
        row_index: how a frequency tier finds a token's row (``LightTokenEmbedding``): ``"coverage"`` bit
            masks.
        output_embedding: for a language model whose output layer had its own (untied) V x d matrix that
            was compressed too: that matrix's shapes (the keyword arguments of ``LightTokenEmbedding``:
            ``num_embeddings``, ``embedding_dim``, ``svd_rank``, ``stage_bits``, ``stage_rows``,
            ``factor_dtype``, ``decoder_dtype``, ``row_index``); ``None`` when the output layer is tied to
            the input embedding, kept dense, or absent.
        embedding_scale: factor the backbone's embedding module multiplies its lookups by (Gemma's
            ``sqrt(hidden_size)``; 1.0 for most models), applied by the compressed embedding's forward.
        output_bias: a tied output layer adds a logit bias of its own (V values of ``factor_dtype``,
            ``LightTokenLMHead.logit_bias``) that the compression fitted to cancel each row's mean logit
            error; ``False`` for checkpoints without one.
        compression_stats: measured facts (real ratio and bytes, fidelity metrics, settings).
        checksums: written by ``save_pretrained``: ``{"input": {tensor: digest}, "input_layout": {...}}``
            (and ``"output"``, ``"output_layout"`` for an untied output matrix): a short SHA-256 of every
            compressed tensor (``LightTokenEmbedding.checksums``) and the fields the module was built with
            (``LightTokenEmbedding.layout``), checked by ``from_pretrained``; ``None`` before the first save.
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
    decoder_dtype: str = "int8"
    row_index: str = "coverage"
    embedding_scale: float = 1.0
    output_embedding: dict[str, Any] | None = None
    output_bias: bool = False
    compression_stats: dict[str, Any] | None = None
    checksums: dict[str, dict[str, Any]] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.stage_bits = list(self.stage_bits or [])
        self.stage_rows = list(self.stage_rows or [])
        self.compression_stats = dict(self.compression_stats or {})
        if len(self.stage_bits) != len(self.stage_rows):
            raise ValueError(
                f"stage_bits ({len(self.stage_bits)} stages) and stage_rows ({len(self.stage_rows)}) must match"
            )
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """``PretrainedConfig.from_dict``; label settings passed at load time also reach the backbone.

        ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)`` hands ``num_labels``
        (or ``id2label``/``label2id``/``problem_type``) to the outer config, but the head is built from
        the nested backbone config, so those are copied there.
        """
        labels = {k: kwargs[k] for k in _LABEL_KEYS if kwargs.get(k) is not None}
        out = super().from_dict(config_dict, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if labels and isinstance(config.backbone, PretrainedConfig):
            for key in _LABEL_KEYS:  # num_labels first: id2label/label2id given with it take precedence
                if key in labels:
                    setattr(config.backbone, key, labels[key])
            for key in _LABEL_KEYS:
                setattr(config, key, getattr(config.backbone, key))
        return out

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        """The backbone's text config: generation, pipelines and PEFT read vocab/hidden sizes from it."""
        return self.backbone.get_text_config(*args, **kwargs)
