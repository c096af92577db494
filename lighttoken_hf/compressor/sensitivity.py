"""Which directions of the embedding space the model is sensitive to: a metric for the reconstruction.

Not every error in an embedding row matters equally to the model: the first layers mix the embedding
through attention and feed-forward weights, so an error along some directions moves the model's
outputs much more than an error of the same size along others. For a small error ``delta`` added to
the input embedding of a token, the model's last hidden states move by ``J delta`` (``J``: the
Jacobian of the outputs w.r.t. that input), so the expected squared output change is
``delta^T M delta`` with ``M = E[J^T J]``. :func:`embedding_sensitivity` estimates ``M`` (d x d)
with random projections (``E_v[(J^T v)(J^T v)^T] = J^T J`` for ``v ~ N(0, I)``), one backward pass
per probe, on any text (the default is general English text, so the metric stays task-agnostic).

:func:`whitening` turns ``M`` into the linear map ``A = M_a^(1/2)`` (``M`` shrunk toward the identity
by ``a``) under which the plain squared error equals the sensitivity-weighted error:
``||(x - x_hat) A||^2 = (x - x_hat)^T M_a (x - x_hat)``. The compressor codes ``E A`` and folds
``A^-1`` into the low-rank factor and the decoders, so the stored format and its size do not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .metrics import tokenized_batches


def embedding_sensitivity(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    probes: int = 4,
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Tensor:
    """Estimate ``M = E[J^T J]`` (d x d, float64): the model's sensitivity to input-embedding errors.

    ``J`` is the Jacobian of the last hidden states (every non-padding position, each scaled to unit
    norm so every token counts alike) with respect to each token's input embedding, averaged over the
    tokens of ``texts``. Works for any model whose input embedding is ``get_input_embeddings()`` and
    whose output has ``hidden_states`` (``output_hidden_states=True``) or ``last_hidden_state``.

    Args:
        model: the uncompressed model (left unchanged; run in eval mode without parameter gradients).
        tokenizer: its tokenizer.
        texts: calibration text (a few hundred sentences are enough for a d x d estimate).
        probes: random output projections per batch (backward passes per batch).
        batch_size: sentences per forward pass (1 when the tokenizer cannot pad).
        max_length: truncation length in tokens.
        seed: seeds the random projections.
        progress: show a progress bar.

    Returns:
        ``M`` normalised to mean eigenvalue 1.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("embedding_sensitivity needs at least one non-empty calibration text")
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    embedding = model.get_input_embeddings()
    # a model with a task head runs without it (a causal LM's logits are V wide per token and not needed)
    body = getattr(model, "base_model", None)
    if getattr(body, "get_input_embeddings", lambda: None)() is not embedding:
        body = model
    dim = embedding.weight.shape[1]
    device = embedding.weight.device
    generator = torch.Generator().manual_seed(seed)
    captured: list[Tensor] = []

    def capture(_module, _inputs, output):  # make the looked-up rows a leaf we can differentiate to
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    total = torch.zeros(dim, dim, dtype=torch.float64)
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    handle = embedding.register_forward_hook(capture)
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            batches = tokenized_batches(
                tokenizer, texts, batch_size=batch_size, max_length=max_length, device=device
            )
            for batch in tqdm(batches, desc="LightToken: sensitivity", disable=not progress):
                captured.clear()
                out = body(**batch, output_hidden_states=True)
                hidden = (
                    out.hidden_states[-1] if getattr(out, "hidden_states", None) else out.last_hidden_state
                )
                if not captured:
                    raise ValueError(
                        f"{type(model).__name__}'s forward did not call get_input_embeddings(); "
                        "cannot measure its sensitivity"
                    )
                inputs = captured[0]
                mask = batch.get("attention_mask", torch.ones(hidden.shape[:2], device=device)).bool()
                scale = hidden.detach().float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
                for probe in range(probes):
                    v = torch.randn(hidden.shape, generator=generator).to(device=device, dtype=torch.float32)
                    v = v / scale * mask.unsqueeze(-1)
                    (grad,) = torch.autograd.grad(
                        (hidden.float() * v).sum(), inputs, retain_graph=probe < probes - 1
                    )
                    rows = grad[mask].double().cpu()
                    total += rows.T @ rows
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    mean_eig = float(total.diagonal().mean())
    if not mean_eig > 0:
        raise ValueError("the model's outputs do not depend on its input embeddings for these texts")
    return total / mean_eig


def whitening(sensitivity: Tensor, shrinkage: float) -> tuple[Tensor, Tensor]:
    """``A = M_a^(1/2)`` and ``A^-1`` (float64) for ``M_a = (1 - a) M + a I`` (``M`` at mean eigenvalue 1)."""
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"sensitivity shrinkage must be in [0, 1], got {shrinkage}")
    m = sensitivity.double()
    m = (m + m.T) / 2
    m = m / m.diagonal().mean()
    m = (1 - shrinkage) * m + shrinkage * torch.eye(m.shape[0], dtype=m.dtype)
    eigvals, eigvecs = torch.linalg.eigh(m)
    root = eigvals.clamp_min(1e-6 * float(eigvals.max())).sqrt()
    return (eigvecs * root) @ eigvecs.T, (eigvecs / root) @ eigvecs.T
