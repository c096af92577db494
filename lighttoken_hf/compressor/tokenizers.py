"""The tokenizer of a model being compressed: found next to the model when not given, checked against the
embedding matrix."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["check_tokenizer", "model_tokenizer"]

logger = logging.getLogger(__name__)


def check_tokenizer(tokenizer: Any, rows: int) -> None:
    """A tokenizer with more tokens than embedding rows produces ids the model cannot embed."""
    if tokenizer is not None and len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the embedding matrix has only {rows} rows, so ids "
            f">= {rows} have no embedding: pass the tokenizer that belongs to this model, or call "
            "model.resize_token_embeddings(len(tokenizer)) (and train the new rows) before compressing"
        )


def model_tokenizer(model: Any, tokenizer: Any) -> Any:
    """The given tokenizer, else the one saved with the model (``None`` when there is none)."""
    if tokenizer is None:
        path = getattr(model, "name_or_path", "") or getattr(
            getattr(model, "config", None), "_name_or_path", ""
        )
        if path:
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(path)
            except Exception as err:  # noqa: BLE001 - any failure means: no tokenizer available
                logger.warning("could not load a tokenizer from %r (%s)", path, err)
    return tokenizer
