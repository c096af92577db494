"""The tiny BERT configuration the unit tests and the multi-process scripts share (imported as a sibling:
pytest and ``torchrun tests/<script>.py`` both put this folder on ``sys.path``)."""

from __future__ import annotations

from typing import Any

from transformers import BertConfig


def tiny_bert_config(**overrides: Any) -> BertConfig:
    """A 1-layer, 32-wide BERT config over 200 token ids (``overrides`` change or add fields)."""
    fields: dict[str, Any] = {
        "vocab_size": 200,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
    }
    fields.update(overrides)
    return BertConfig(**fields)
