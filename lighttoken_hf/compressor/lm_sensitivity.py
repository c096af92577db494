"""A metric for language models: the Fisher information of the next-token distribution per token row.

For a language model the error that matters is the change of its predicted distribution: for a small
change ``delta_v`` of row ``v`` of the token matrix, ``KL(p || p_hat) ~ 1/2 delta_v^T F_v delta_v`` with
``F_v`` the Fisher information of ``log p(y)`` (``y`` drawn from the model) with respect to that row.
Row ``v`` enters the model twice when the output layer is tied to the input embedding:

* **output side**: logit ``z_v = h . e_v`` for every final hidden state ``h``, so
  ``F_v^out = E[p_v (1 - p_v) h h^T]``, summed over every predicted position;
* **input side**: where token ``v`` is an input, through the whole network:
  ``F_v^in = E[g g^T]`` with ``g`` the gradient of ``log p(y)`` with respect to that input row,
  estimated with one sampled ``y`` per position and one backward pass per batch.

The compressor takes one shared d x d metric and one weight per row (the format has no room for a
d x d matrix per row), so :func:`lm_sensitivity` returns the Kronecker-style factorisation
``F_v ~ w_v M``: ``w_v = tr F_v`` and ``M = sum_v F_v / sum_v tr F_v``. The input-side weight of a row
is its mean per-occurrence Fisher trace times the token's general-text frequency (wordfreq), so rows
the calibration text never shows still get a weight; the output side covers every row directly.

The output side's error also has a part one stored number per row removes: a row's logit error
``h . delta_v`` averaged over the positions that weigh it is ``mu_v . delta_v`` (``mu_v`` the
``p_v (1 - p_v)``-weighted mean final hidden state), a per-token constant that a logit bias
``c_v = -mu_v . delta_v`` cancels (:func:`output_logit_bias`; ``lm_sensitivity(..., output_means=True)``
returns ``mu``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .metrics import tokenized_batches


def lm_sensitivity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    input_frequencies: Tensor | None = None,
    input_scale: float = 1.0,
    tied_output: bool = True,
    batch_size: int = 4,
    max_length: int = 128,
    seed: int = 0,
    progress: bool = True,
    output_means: bool = False,
) -> tuple[Tensor, Tensor, dict] | tuple[Tensor, Tensor, dict, Tensor]:
    """Estimate the LM metric: ``(M (d x d, mean eigenvalue 1), row weights w (V,), facts)``.

    Args:
        model: the uncompressed causal LM (left unchanged).
        tokenizer: its tokenizer.
        texts: calibration text (general text, not the evaluation text).
        input_frequencies: per-row general-text frequencies (V,) spreading the input-side weight over
            rows the texts do not contain; ``None`` uses the counts in ``texts``.
        input_scale: the factor the embedding module multiplies its lookups by (Gemma: sqrt(d)); the
            input-side gradient with respect to a stored row is this times the one w.r.t. the lookup.
        tied_output: whether the output layer reads the same matrix (adds the output-side Fisher).
        batch_size, max_length: batching of the calibration text.
        seed: seeds the sampled next tokens.
        progress: show a progress bar.
        output_means: also return ``mu`` (V x d, float32): each row's ``p_v (1 - p_v)``-weighted mean
            final hidden state (the overall weighted mean for a row no position weighs); needs
            ``tied_output``.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("the LM metric needs at least one non-empty calibration text")
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output layer (get_output_embeddings() is None)")
    v, d = embedding.weight.shape
    device = embedding.weight.device
    generator = torch.Generator().manual_seed(seed)
    leaves: list[Tensor] = []
    finals: list[Tensor] = []

    def capture_input(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    def capture_final(_module, inputs):
        finals.append(inputs[0])

    m_in = torch.zeros(d, d, dtype=torch.float64)
    m_out = torch.zeros(d, d, dtype=torch.float64)
    w_out = torch.zeros(v, dtype=torch.float64)
    in_trace = torch.zeros(v, dtype=torch.float64)
    in_count = torch.zeros(v, dtype=torch.float64)
    if output_means and not tied_output:
        raise ValueError("output_means needs tied_output=True (the output side reads the same matrix)")
    mean_sum = torch.zeros(v, d, dtype=torch.float32) if output_means else None
    mass = torch.zeros(v, dtype=torch.float64)
    positions = 0
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    handles = [embedding.register_forward_hook(capture_input), head.register_forward_pre_hook(capture_final)]
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        batches = tokenized_batches(
            tokenizer, texts, batch_size=batch_size, max_length=max_length, device=device
        )
        for batch in tqdm(list(batches), desc="LightToken: LM metric", disable=not progress):
            leaves.clear()
            finals.clear()
            with torch.enable_grad():
                logits = model(**batch).logits.float()
                if not leaves or not finals:
                    raise ValueError(
                        f"{type(model).__name__}'s forward did not call both get_input_embeddings() and "
                        "get_output_embeddings(); cannot measure its LM metric"
                    )
                mask = batch.get("attention_mask", torch.ones(logits.shape[:2], device=device)).bool()
                logp = torch.log_softmax(logits, dim=-1)
                probs = logp.detach().exp()
                sampled = torch.multinomial(probs[mask].cpu(), 1, generator=generator).squeeze(1).to(device)
                (grad,) = torch.autograd.grad(logp[mask].gather(1, sampled.unsqueeze(1)).sum(), leaves[0])
            g = grad[mask].double().cpu() * input_scale
            ids = batch["input_ids"][mask].cpu()
            m_in += g.T @ g
            in_trace.index_add_(0, ids, (g * g).sum(1))
            in_count.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
            if tied_output:
                h = finals[0].detach()[mask].double().cpu()
                p = probs[mask].double().cpu()
                variance = p * (1 - p)  # p_v (1 - p_v) at each position: formed once (positions x V)
                m_out += (h * variance.sum(1).unsqueeze(1)).T @ h
                w_out += variance.T @ (h * h).sum(1)
                if mean_sum is not None:  # in blocks of rows: no V x d float64 temporary
                    for start in range(0, v, 16384):
                        mean_sum[start : start + 16384] += (variance[:, start : start + 16384].T @ h).float()
                    mass += variance.sum(0)
            positions += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    # input side: each row's mean Fisher trace per occurrence times its expected number of occurrences
    seen = in_count > 0
    per_occurrence = torch.where(
        seen, in_trace / in_count.clamp_min(1), in_trace[seen].sum() / in_count.sum()
    )
    if input_frequencies is not None:
        f = torch.as_tensor(input_frequencies, dtype=torch.float64).clamp_min(0)
        occurrences = f / f.sum().clamp_min(1e-300) * in_count.sum()
    else:
        occurrences = in_count
    w_in = per_occurrence * occurrences
    weights = w_in + w_out
    metric = m_in + m_out
    mean_eig = float(metric.diagonal().mean())
    if not mean_eig > 0 or not torch.isfinite(metric).all():
        raise ValueError("the model's predictions do not depend on its token matrix for these texts")
    info = {
        "calibration_texts": len(texts),
        "positions": positions,
        "output_share": float(w_out.sum() / weights.sum()),
        "tied_output": tied_output,
    }
    if mean_sum is None:
        return metric / mean_eig, weights, info
    overall = mean_sum.sum(0) / max(float(mass.sum()), 1e-300)
    weighed = mass > 0
    mean_sum[weighed] /= mass[weighed].float().unsqueeze(1)
    mean_sum[~weighed] = overall
    return metric / mean_eig, weights, info, mean_sum


def output_logit_bias(
    original: Tensor, decode: Callable[[Tensor], Tensor], means: Tensor, block_rows: int = 8192
) -> Tensor:
    """The logit bias ``c_v = -mu_v . (decoded_v - original_v)`` (V,) that cancels each row's mean logit error.

    ``original``: the dense V x d matrix; ``decode(ids)``: the compressed rows of ``ids``; ``means``: ``mu``
    from ``lm_sensitivity(..., output_means=True)``. Computed in blocks of rows (no V x d temporary).
    """
    v = original.shape[0]
    bias = torch.empty(v, dtype=torch.float32)
    for start in range(0, v, block_rows):
        ids = torch.arange(start, min(start + block_rows, v))
        delta = decode(ids).float().cpu() - original[start : start + len(ids)].float().cpu()
        bias[start : start + len(ids)] = -(delta * means[start : start + len(ids)]).sum(1)
    return bias
