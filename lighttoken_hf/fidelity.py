"""Evaluation of a compressed encoder on data: zero-shot STS (:func:`sts_spearman`) and the texts the checks
run on (the built-in sentences, parquet files).

The metrics themselves (matrix fidelity, the sentence-embedding cosine) are the compressor's,
:mod:`lighttoken_hf.compressor.metrics`; they are re-exported here so that evaluation needs one import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .compressor.metrics import (
    matrix_fidelity,
    mean_cosine,
    mean_pooled_embeddings,
    sentence_embedding_cosine,
)

__all__ = [
    "builtin_sentences",
    "load_sentences_from_parquet",
    "matrix_fidelity",
    "mean_cosine",
    "mean_pooled_embeddings",
    "sentence_embedding_cosine",
    "sts_spearman",
]

_SENTENCES_FILE = Path(__file__).resolve().parent / "data" / "sentences.txt"


def sts_spearman(
    model: torch.nn.Module,
    tokenizer,
    sentences1: list[str],
    sentences2: list[str],
    gold_scores: Sequence[float] | np.ndarray | Tensor,
    **kw,
) -> float:
    """Zero-shot semantic textual similarity: Spearman of cos(emb(s1), emb(s2)) against gold scores.

    Embeddings are :func:`mean_pooled_embeddings` (``**kw`` is passed on). Higher is better; the scale of
    the gold scores (0-5 for STS-B) does not matter.
    """
    if not len(sentences1) == len(sentences2) == len(gold_scores):
        raise ValueError(
            f"sentences1, sentences2 and gold_scores must have the same length, got "
            f"{len(sentences1)}, {len(sentences2)}, {len(gold_scores)}"
        )
    from .tasks.metrics import spearman  # the one rank correlation of the package (also GLUE's STS-B)

    first = mean_pooled_embeddings(model, tokenizer, list(sentences1), **kw)
    second = mean_pooled_embeddings(model, tokenizer, list(sentences2), **kw)
    cosines = torch.nn.functional.cosine_similarity(first, second, dim=1)
    gold = gold_scores.detach().cpu().numpy() if isinstance(gold_scores, Tensor) else np.asarray(gold_scores)
    return spearman(cosines.numpy(), gold)


# --------------------------------------------------------------------------------------- data
def builtin_sentences() -> list[str]:
    """The 120 varied English sentences shipped in ``lighttoken_hf/data/sentences.txt``.

    A small offline sample (news, science, sports, cooking, reviews, questions, dialogue, technical
    text, numbers, punctuation) for quick fidelity checks when no evaluation set is at hand.
    """
    lines = _SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def load_sentences_from_parquet(
    path: str | Path,
    column: str = "sentence",
    limit: int | None = None,
) -> list[str]:
    """Read the text column ``column`` of a parquet file.

    Empty and missing values are dropped, then the first ``limit`` sentences are kept (all when
    ``None``). Raises ``FileNotFoundError`` when the file is absent and ``KeyError`` when the column
    is not in it.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no parquet file at {path}")
    schema_names = pq.read_schema(path).names
    if column not in schema_names:
        raise KeyError(f"column {column!r} not in {path} (columns: {schema_names})")
    values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    sentences = [str(v) for v in values if v is not None and str(v).strip()]
    return sentences if limit is None else sentences[: max(0, limit)]
