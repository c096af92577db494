"""How well a compressed language model keeps its original's predictions: perplexity, KL, top-1, samples.

For a causal LM every position predicts the next token; for a masked LM a fixed, seeded 15% of the
tokens are masked and predicted. :func:`lm_fidelity` runs the original and the compressed model on the
same texts and compares their predicted distributions position by position:

* ``perplexity_original`` / ``perplexity_compressed``: exp of the mean negative log-likelihood of the
  real next (or masked) token; ``perplexity_increase`` is their relative difference (0.05 = +5%).
* ``next_token_kl``: mean KL(original || compressed) per predicted token, in nats.
* ``top1_agreement``: share of positions where both models rank the same token first.
* ``sample_original`` / ``sample_compressed``: greedy continuations of a short prompt (causal LMs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .metrics import model_device, tokenized_batches

__all__ = ["DEFAULT_PROMPT", "generation_speed", "greedy_sample", "is_lm", "lm_fidelity", "perplexity"]

#: Prompt of the greedy samples in reports and model cards.
DEFAULT_PROMPT = "The capital of France is"
_MASK_SHARE = 0.15


def is_lm(model: torch.nn.Module) -> str | None:
    """``"causal"``, ``"masked"`` or ``None``: which kind of language model ``model`` is."""
    names = [cls.__name__ for cls in type(model).__mro__]
    if any(n.endswith("ForCausalLM") for n in names):
        return "causal"
    if any(n.endswith("ForMaskedLM") for n in names):
        return "masked"
    return None


def _batches(
    tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int, device: torch.device
) -> Iterator[dict[str, Tensor]]:
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("LM fidelity needs at least one non-empty text")
    for batch in tokenized_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length, device=device):
        yield {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def _predictions(
    model: torch.nn.Module, batch: dict[str, Tensor], kind: str, tokenizer: Any, seed: int
) -> tuple[Tensor, Tensor]:
    """(log-probabilities at the predicted positions (N x V), the real tokens there (N,))."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids)).bool()
    if kind == "causal":
        logits = model(**batch).logits[:, :-1]
        targets, keep = ids[:, 1:], mask[:, 1:] & mask[:, :-1]
    else:
        generator = torch.Generator().manual_seed(seed)
        special = torch.zeros_like(mask)
        for token in set(getattr(tokenizer, "all_special_ids", [])):
            special |= ids == token
        keep = mask & ~special & (torch.rand(ids.shape, generator=generator).to(ids.device) < _MASK_SHARE)
        masked = ids.masked_fill(keep, tokenizer.mask_token_id)
        logits = model(**{**batch, "input_ids": masked}).logits
        targets = ids
    return torch.log_softmax(logits[keep].float(), dim=-1), targets[keep]


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 4,
    seed: int = 0,
) -> float:
    """Perplexity of ``model`` (a causal or masked LM) on ``texts`` (each truncated to ``max_length`` tokens)."""
    kind = is_lm(model)
    if kind is None:
        raise ValueError(f"{type(model).__name__} is not a causal or masked language model")
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        for b, batch in enumerate(
            _batches(tokenizer, texts, max_length=max_length, batch_size=batch_size, device=model_device(model))
        ):
            logp, targets = _predictions(model, batch, kind, tokenizer, seed + b)
            nll -= float(logp.gather(1, targets.unsqueeze(1)).sum())
            count += targets.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no token to predict in the texts (each needs at least two tokens)")
    return math.exp(nll / count)


@torch.no_grad()
def greedy_sample(
    model: torch.nn.Module, tokenizer: Any, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 12
) -> str:
    """The greedy continuation of ``prompt`` (through ``generate`` with the KV cache), without the prompt."""
    batch = tokenizer(prompt, return_tensors="pt").to(model_device(model))
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def generation_speed(
    model: torch.nn.Module, tokenizer: Any, prompt: str = DEFAULT_PROMPT, new_tokens: int = 32
) -> float:
    """Greedy-generation speed in new tokens per second (KV cache on, batch 1, one warm-up call)."""
    batch = tokenizer(prompt, return_tensors="pt").to(model_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {"do_sample": False, "pad_token_id": pad, "min_new_tokens": new_tokens}
    model.generate(**batch, max_new_tokens=2, **{**kwargs, "min_new_tokens": 2})
    start = time.perf_counter()
    out = model.generate(**batch, max_new_tokens=new_tokens, **kwargs)
    produced = out.shape[1] - batch["input_ids"].shape[1]
    return produced / (time.perf_counter() - start)


@torch.no_grad()
def lm_fidelity(
    original: torch.nn.Module,
    compressed: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 4,
    prompt: str | None = DEFAULT_PROMPT,
    sample_tokens: int = 12,
    seed: int = 0,
    reference: list | None = None,
    reference_budget_bytes: int | None = 2 * 1024**3,
) -> dict[str, Any]:
    """Compare ``compressed`` with ``original`` (same tokenizer) on ``texts``: see the module docstring.

    ``reference``: an empty list is filled with the original's predictions (fp16 log-probabilities per
    batch); passing the filled list again with the same texts and settings skips the original's forwards.
    It holds at most ``reference_budget_bytes`` (``None``: no bound): the batches past it are predicted by
    the original again on each call (a 262k-token vocabulary needs 0.5 MB per predicted token).

    Raises:
        ValueError: a model is not a causal/masked LM, the two are of different kinds, the vocabularies
            differ, or the texts give no token to predict.
    """
    kind = is_lm(original)
    if kind is None or is_lm(compressed) != kind:
        raise ValueError(
            f"LM fidelity compares two causal or two masked LMs; got {type(original).__name__} and "
            f"{type(compressed).__name__}"
        )
    if kind == "masked" and getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError("the tokenizer has no mask token, which a masked-LM evaluation needs")
    modes = (original.training, compressed.training)
    original.eval()
    compressed.eval()
    nll_o = nll_c = kl = 0.0
    agree = count = 0
    try:
        for b, batch in enumerate(
            _batches(tokenizer, texts, max_length=max_length, batch_size=batch_size, device=model_device(original))
        ):
            if reference is not None and b < len(reference):
                logp_o, targets = reference[b][0].float(), reference[b][1]
            else:
                logp_o, targets = _predictions(original, batch, kind, tokenizer, seed + b)
                held = sum(entry[0].numel() * 2 for entry in reference) if reference is not None else 0
                fits = reference_budget_bytes is None or held + logp_o.numel() * 2 <= reference_budget_bytes
                if reference is not None and b == len(reference) and fits:  # only a prefix of batches is kept
                    reference.append((logp_o.half(), targets))
            moved = {k: v.to(model_device(compressed)) for k, v in batch.items()}
            logp_c, _ = _predictions(compressed, moved, kind, tokenizer, seed + b)
            logp_c = logp_c.to(logp_o.device)
            if logp_o.shape != logp_c.shape:
                raise ValueError(
                    f"the models predict over different vocabularies ({logp_o.shape[-1]} vs {logp_c.shape[-1]} tokens)"
                )
            nll_o -= float(logp_o.gather(1, targets.unsqueeze(1)).sum())
            nll_c -= float(logp_c.gather(1, targets.unsqueeze(1)).sum())
            kl += float((logp_o.exp() * (logp_o - logp_c)).sum())
            agree += int((logp_o.argmax(-1) == logp_c.argmax(-1)).sum())
            count += targets.numel()
    finally:
        original.train(modes[0])
        compressed.train(modes[1])
    if count == 0:
        raise ValueError("no token to predict in the texts (each needs at least two tokens)")
    ppl_o, ppl_c = math.exp(nll_o / count), math.exp(nll_c / count)
    result: dict[str, Any] = {
        "lm_kind": kind,
        "texts": len(texts),
        "predicted_tokens": count,
        "perplexity_original": ppl_o,
        "perplexity_compressed": ppl_c,
        "perplexity_increase": ppl_c / ppl_o - 1,
        "next_token_kl": kl / count,
        "top1_agreement": agree / count,
    }
    if kind == "causal" and prompt:
        result["sample_prompt"] = prompt
        result["sample_original"] = greedy_sample(original, tokenizer, prompt, sample_tokens)
        result["sample_compressed"] = greedy_sample(compressed, tokenizer, prompt, sample_tokens)
    return result
