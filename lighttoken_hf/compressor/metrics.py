"""How close a compressed embedding matrix, and the model using it, stays to the original.

* **Matrix level** (:func:`matrix_fidelity`): relative Frobenius error, row cosines and how well the
  cosine nearest-neighbour structure of the vocabulary survives (every compression's report).
* **Model level** (:func:`sentence_embedding_cosine`): mean-pooled sentence embeddings of the original
  and the compressed model compared on the same texts (the end-to-end check of an encoder).

Language models have their own end-to-end metrics in :mod:`~lighttoken_hf.compressor.lm_metrics`;
evaluation on datasets (STS, parquet files) is :mod:`lighttoken_hf.fidelity`'s. Everything runs on the
device of the tensors / model passed in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = [
    "matrix_fidelity",
    "mean_cosine",
    "mean_pooled_embeddings",
    "model_device",
    "sentence_embedding_cosine",
    "tokenized_batches",
]

# Elements of one temporary block (rows x width, or queries x vocabulary rows): 4 MiB of fp32.
_NN_BLOCK_ELEMENTS = 1024 * 1024


# --------------------------------------------------------------------------------------- matrix level
def _rows_per_block(width: int) -> int:
    """Rows of ``width`` values that fit in about ``_NN_BLOCK_ELEMENTS`` values."""
    return max(1, _NN_BLOCK_ELEMENTS // max(1, width))


def _topk_neighbours(matrix: Tensor, norms: Tensor, queries: Tensor, k: int) -> Tensor:
    """Indices (len(queries) x k) of the k rows of ``matrix`` most cosine-similar to each query row.

    The query row itself is excluded; rows of zero norm have cosine 0 with everything. ``norms`` are
    the row norms of ``matrix``. The vocabulary is read once, in blocks of rows: each block's
    (queries x block) similarities are merged into the running top k, so memory stays around
    ``_NN_BLOCK_ELEMENTS`` floats whatever the vocabulary size, and no normalised copy is made.
    """
    vocab, device = matrix.shape[0], matrix.device
    inverse_norms = 1.0 / norms.clamp_min(torch.finfo(torch.float32).tiny)
    normalised = matrix[queries] * inverse_norms[queries].unsqueeze(1)
    best = torch.full((queries.numel(), k), -float("inf"), device=device)
    best_ids = torch.zeros(queries.numel(), k, dtype=torch.long, device=device)
    positions = torch.arange(queries.numel(), device=device)
    step = _rows_per_block(queries.numel())
    for start in range(0, vocab, step):
        stop = min(vocab, start + step)
        sims = (normalised @ matrix[start:stop].T) * inverse_norms[start:stop]
        own = (queries >= start) & (queries < stop)
        sims[positions[own], queries[own] - start] = -float("inf")
        values, ids = sims.topk(min(k, stop - start), dim=1)
        merged, merged_ids = torch.cat([best, values], 1), torch.cat([best_ids, ids + start], 1)
        best, pick = merged.topk(k, dim=1)
        best_ids = merged_ids.gather(1, pick)
    return best_ids


@torch.no_grad()
def matrix_fidelity(
    original: Tensor,
    reconstructed: Tensor,
    *,
    nn_k: int = 10,
    nn_queries: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Compare a reconstructed embedding matrix with the original.

    Everything is computed in fp32 blocks of rows, so the extra memory stays a few tens of MB beyond
    the two matrices themselves (plus an fp32 copy of ``reconstructed`` if it is stored in another
    dtype).

    Args:
        original: the dense V x d matrix E.
        reconstructed: its reconstruction E_hat, same shape (any float dtype).
        nn_k: neighbours compared per query for ``nn_overlap`` (capped at V - 1).
        nn_queries: number of query rows for ``nn_overlap`` (capped at the number of nonzero rows),
            drawn without replacement from the rows of nonzero norm by a ``torch.Generator`` seeded
            with ``seed``.
        seed: seed of the query sample.

    Returns:
        A dict with

        * ``rel_error``: ``||E - E_hat||_F / ||E||_F``;
        * ``mean_row_cosine`` / ``min_row_cosine``: cosine between each row of E and the same row of
          E_hat, averaged / minimised over the rows whose norm in E is nonzero (a zero row in E_hat
          counts as cosine 0);
        * ``nn_overlap``: mean over the query rows of ``|N_k(E, i) & N_k(E_hat, i)| / k``, where
          ``N_k(M, i)`` is the set of the k rows of M most cosine-similar to row i of M, searched over the
          whole vocabulary with row i itself excluded.
    """
    if original.shape != reconstructed.shape or original.dim() != 2:
        raise ValueError(
            f"expected two V x d matrices of the same shape, got {tuple(original.shape)} and "
            f"{tuple(reconstructed.shape)}"
        )
    if nn_k < 1:
        raise ValueError(f"nn_k must be >= 1, got {nn_k}")
    e = original.detach().float()
    e_hat = reconstructed.detach().to(device=e.device, dtype=torch.float32)
    vocab, dim = e.shape

    squared_error = squared_norm = 0.0
    norms = torch.empty(vocab, device=e.device)
    norms_hat = torch.empty(vocab, device=e.device)
    dots = torch.empty(vocab, device=e.device)
    step = _rows_per_block(dim)
    for start in range(0, vocab, step):
        stop = min(vocab, start + step)
        block, block_hat = e[start:stop], e_hat[start:stop]
        squared_error += float((block - block_hat).pow(2).sum(dtype=torch.float64))
        squared_norm += float(block.pow(2).sum(dtype=torch.float64))
        norms[start:stop] = block.norm(dim=1)
        norms_hat[start:stop] = block_hat.norm(dim=1)
        dots[start:stop] = (block * block_hat).sum(dim=1)
    rel_error = (squared_error / squared_norm) ** 0.5 if squared_norm > 0 else float("nan")

    nonzero = (norms > 0).nonzero().squeeze(1)
    if nonzero.numel():
        tiny = torch.finfo(torch.float32).tiny
        row_cos = dots[nonzero] / (norms[nonzero] * norms_hat[nonzero]).clamp_min(tiny)
        mean_cos, min_cos = float(row_cos.mean()), float(row_cos.min())
    else:
        mean_cos = min_cos = float("nan")

    k = min(nn_k, vocab - 1)
    n_queries = min(nn_queries, nonzero.numel())
    if k >= 1 and n_queries >= 1:
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randperm(nonzero.numel(), generator=generator)[:n_queries]
        queries = nonzero[pick.to(nonzero.device)]
        ref = _topk_neighbours(e, norms, queries, k)
        new = _topk_neighbours(e_hat, norms_hat, queries, k)
        hits = (ref.unsqueeze(2) == new.unsqueeze(1)).any(dim=2).sum(dim=1)
        nn_overlap = float(hits.float().mean() / k)
    else:
        nn_overlap = float("nan")

    return {
        "rel_error": rel_error,
        "mean_row_cosine": mean_cos,
        "min_row_cosine": min_cos,
        "nn_overlap": nn_overlap,
    }


# --------------------------------------------------------------------------------------- model level
def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model with neither)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def tokenized_batches(
    tokenizer, texts: Sequence[str], *, batch_size: int, max_length: int, device: torch.device
) -> Iterator[dict[str, Tensor]]:
    """``texts`` tokenized in padded batches on ``device`` (one text per batch when the tokenizer cannot pad)."""
    step = batch_size if getattr(tokenizer, "pad_token", None) is not None else 1
    for start in range(0, len(texts), step):
        batch = tokenizer(
            list(texts[start : start + step]),
            padding=step > 1,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        yield {name: tensor.to(device) for name, tensor in batch.items()}


@torch.no_grad()
def mean_pooled_embeddings(
    model: torch.nn.Module,
    tokenizer,
    sentences: list[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
) -> Tensor:
    """Sentence embeddings as the attention-mask mean of ``last_hidden_state`` (sentence-transformers style).

    Works for any Hugging Face ``AutoModel`` whose output has ``last_hidden_state``. The model is put in
    eval mode for the call (its previous train/eval mode is restored afterwards) and run under
    ``torch.no_grad``. With a tokenizer that has no pad token, sentences are embedded one at a time.

    Args:
        model: the encoder.
        tokenizer: its tokenizer (called with padding and truncation to ``max_length``).
        sentences: the texts to embed.
        batch_size: sentences per forward pass.
        max_length: truncation length in tokens.

    Returns:
        An fp32 CPU tensor of shape (len(sentences), hidden_size), not normalised.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sentences = list(sentences)
    was_training = model.training
    model.eval()
    pooled = []
    try:
        # tokenizers without a pad token (GPT-2 style) cannot pad a batch: one sentence at a time
        batches = tokenized_batches(
            tokenizer, sentences, batch_size=batch_size, max_length=max_length, device=model_device(model)
        )
        for batch in batches:
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            pooled.append((summed / mask.sum(dim=1).clamp_min(1e-9)).cpu())
    finally:
        model.train(was_training)
    if not pooled:
        hidden_size = getattr(getattr(model, "config", None), "hidden_size", 0)
        return torch.empty(0, hidden_size)
    return torch.cat(pooled)


def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine similarity between the paired rows of two (N x d) tensors."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).mean())


def sentence_embedding_cosine(
    original_model: torch.nn.Module,
    compressed_model: torch.nn.Module,
    tokenizer,
    sentences: list[str],
    **kw,
) -> float:
    """Mean cosine between the original and the compressed model's mean-pooled embeddings of ``sentences``.

    ``**kw`` (``batch_size``, ``max_length``) is passed to :func:`mean_pooled_embeddings`. 1.0 means the
    compressed model embeds every sentence in exactly the same direction as the original.
    """
    reference = mean_pooled_embeddings(original_model, tokenizer, sentences, **kw)
    compressed = mean_pooled_embeddings(compressed_model, tokenizer, sentences, **kw)
    return mean_cosine(reference, compressed)
