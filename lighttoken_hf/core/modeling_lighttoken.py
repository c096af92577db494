"""Models whose input token embedding is LightToken-compressed (ships with checkpoints as remote code).

Each class builds the backbone's *own* model class for its task from the nested backbone config
(``AutoModel``, ``AutoModelForSequenceClassification``, ...) and swaps its input embedding for a
:class:`~.lighttoken_codec.LightTokenEmbedding`. Forward calls go straight to the backbone, so the
outputs are the backbone's own output types and any backbone with input embeddings works. The
checkpoint stores no dense V x d word-embedding tensor, only the compressed tensors.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from .configuration_lighttoken import LightTokenConfig
from .lighttoken_codec import LightTokenEmbedding


def embedding_from_config(config: LightTokenConfig) -> LightTokenEmbedding:
    """An empty (zero) :class:`LightTokenEmbedding` with the shapes recorded in ``config``."""
    return LightTokenEmbedding(
        config.num_embeddings,
        config.embedding_dim,
        svd_rank=config.svd_rank,
        stage_bits=config.stage_bits,
        stage_rows=config.stage_rows,
        padding_idx=config.padding_idx,
        factor_dtype=getattr(torch, config.factor_dtype),
    )


def _run_backbone(self: LightTokenPreTrainedModel, *args: Any, **kwargs: Any) -> Any:
    return self.backbone(*args, **kwargs)


class LightTokenPreTrainedModel(PreTrainedModel):
    """Shared machinery: build the backbone for ``backbone_auto_class`` and swap in the compressed embedding."""

    config_class = LightTokenConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    backbone_auto_class: Any = AutoModel

    def __init__(self, config: LightTokenConfig, backbone: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        if backbone is None:
            backbone = self.backbone_auto_class.from_config(config.backbone)
        self.backbone = backbone
        embedding = embedding_from_config(config)
        # from_pretrained(dtype=...) sets the default dtype while building: follow it
        embedding.output_dtype = torch.get_default_dtype()
        self.backbone.set_input_embeddings(embedding)
        self._expose_backbone_signature()
        self.post_init()

    def _expose_backbone_signature(self) -> None:
        """Give ``forward`` the backbone's own signature.

        ``Trainer`` (``remove_unused_columns``), pipelines and PEFT inspect ``model.forward`` to decide
        which inputs to pass; a bare ``*args, **kwargs`` would make them drop every column.
        """
        signature = inspect.signature(self.backbone.forward)
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        fn = types.FunctionType(_run_backbone.__code__, _run_backbone.__globals__, "forward")
        fn.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
        fn.__doc__ = type(self).forward.__doc__
        self.forward = types.MethodType(fn, self)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the backbone (the compressed embedding's fp16 storage does not count)."""
        for module in self.backbone.modules():
            if isinstance(module, LightTokenEmbedding):
                continue
            for param in module.parameters(recurse=False):
                if param.is_floating_point():
                    return param.dtype
        return self.get_input_embeddings().output_dtype

    def get_input_embeddings(self) -> LightTokenEmbedding:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the backbone (same arguments and outputs as the uncompressed model)."""
        return self.backbone(*args, **kwargs)

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "resize_token_embeddings is not supported on a LightToken-compressed model: its codes are fixed. "
            "Resize the uncompressed model first, then compress it again with lighttoken_hf.compress()."
        )


class LightTokenModel(LightTokenPreTrainedModel):
    """Base model (hidden states), like ``AutoModel``."""

    backbone_auto_class = AutoModel


class LightTokenForSequenceClassification(LightTokenPreTrainedModel):
    """Sequence classification / regression head, like ``AutoModelForSequenceClassification``."""

    backbone_auto_class = AutoModelForSequenceClassification


class LightTokenForTokenClassification(LightTokenPreTrainedModel):
    """Token classification head, like ``AutoModelForTokenClassification``."""

    backbone_auto_class = AutoModelForTokenClassification


class LightTokenForQuestionAnswering(LightTokenPreTrainedModel):
    """Extractive question answering head, like ``AutoModelForQuestionAnswering``."""

    backbone_auto_class = AutoModelForQuestionAnswering


class LightTokenForMultipleChoice(LightTokenPreTrainedModel):
    """Multiple choice head, like ``AutoModelForMultipleChoice``."""

    backbone_auto_class = AutoModelForMultipleChoice


#: (backbone Auto class, LightToken class) pairs, most specific first.
LIGHTTOKEN_CLASSES: tuple[tuple[Any, type[LightTokenPreTrainedModel]], ...] = (
    (AutoModelForSequenceClassification, LightTokenForSequenceClassification),
    (AutoModelForTokenClassification, LightTokenForTokenClassification),
    (AutoModelForQuestionAnswering, LightTokenForQuestionAnswering),
    (AutoModelForMultipleChoice, LightTokenForMultipleChoice),
    (AutoModel, LightTokenModel),
)
