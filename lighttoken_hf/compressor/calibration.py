"""Calibration text a causal LM writes itself: the default input of an int4 backbone's rounding for decoders.

GPTQ (``backbone.gptq_int4``) keeps each Linear's outputs on the inputs it sees during calibration, so the
closer those inputs are to the ones the model will see, the better. With no text from the user, an encoder
reads wordfreq pseudo-sentences (``frequencies.general_text_samples``); a decoder can do better without any
corpus: text it samples itself, started from its BOS token, is grammatical and of the kind it was trained
on, and it reads both. What each costs Gemma-3-270M is measured in ``docs/method.md`` section 8
(``benchmarks/int4_backbone_probe.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm
from transformers.generation import BaseStreamer

from ..core.modeling_lighttoken import LightTokenForCausalLM
from .frequencies import general_text_samples
from .surgery import wrapper_class

__all__ = [
    "MODEL_WRITTEN_TEXTS",
    "MODEL_WRITTEN_TOKENS",
    "backbone_calibration_texts",
    "can_write_calibration_text",
    "model_written_texts",
]

#: Texts, and new tokens per text, of the default model-written calibration text.
MODEL_WRITTEN_TEXTS = 128
MODEL_WRITTEN_TOKENS = 128
#: Texts sampled at once (one ``generate`` call each): large batches keep a CPU busy.
_GENERATE_BATCH = 64
#: Nucleus sampling: the smallest set of next tokens with this much probability.
_TOP_P = 0.95


class _TokenSteps(BaseStreamer):
    """Advances a progress bar once per generated token (``generate`` puts the prompt first)."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.prompt_seen = bar, False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.bar.update(1)
        self.prompt_seen = True

    def end(self) -> None:
        pass


def can_write_calibration_text(model: Any, tokenizer: Any) -> bool:
    """Whether ``model`` can sample calibration text itself: a generating model and a tokenizer with a
    BOS token to start from."""
    can_generate = getattr(model, "can_generate", None)
    return (
        callable(can_generate)
        and bool(can_generate())
        and tokenizer is not None
        and getattr(tokenizer, "bos_token_id", None) is not None
    )


def model_written_texts(
    model: Any,
    tokenizer: Any,
    count: int = MODEL_WRITTEN_TEXTS,
    tokens: int = MODEL_WRITTEN_TOKENS,
    *,
    seed: int = 0,
    progress: bool = False,
) -> list[str]:
    """``count`` texts of up to ``tokens`` new tokens each (fewer where the model ends one) that ``model``
    samples (temperature 1, nucleus top-p 0.95) from its BOS token. Same model and seed, same texts; the
    global random state is left as it was."""
    if count < 1 or tokens < 1:
        raise ValueError(f"count and tokens must be >= 1, got {count} and {tokens}")
    if not can_write_calibration_text(model, tokenizer):
        raise ValueError(
            f"{type(model).__name__} cannot write calibration text: it needs a generating (causal LM) model and a "
            "tokenizer with a BOS token; pass calibration_texts= instead"
        )
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = []
    sizes = [min(_GENERATE_BATCH, count - start) for start in range(0, count, _GENERATE_BATCH)]
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(sizes) * tokens, desc="LightToken: calibration text the model writes", unit="token",
               disable=not progress)  # fmt: skip
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for done, size in enumerate(sizes, start=1):
            start = torch.full((size, 1), tokenizer.bos_token_id, device=device)
            out = model.generate(
                start, attention_mask=torch.ones_like(start), do_sample=True, top_p=_TOP_P, top_k=0,
                temperature=1.0, max_new_tokens=tokens, pad_token_id=pad, streamer=_TokenSteps(bar),
            )  # fmt: skip
            texts.extend(tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True))
            bar.n = done * tokens  # a batch every text of which the model ended early
            bar.refresh()
    bar.close()
    model.train(was_training)
    return texts


def backbone_calibration_texts(
    model: Any, tokenizer: Any, texts: list[str] | None = None, *, seed: int = 0, progress: bool = False
) -> tuple[list[str], str]:
    """The texts an int4 backbone's rounding reads for ``model`` (the original, before compression), and a
    line saying what they are: ``texts`` when given; else the wordfreq pseudo-sentences, for a causal LM that
    can write (:func:`can_write_calibration_text`) after :data:`MODEL_WRITTEN_TEXTS` texts it writes itself."""
    if texts is not None:
        return list(texts), f"{len(texts)} given texts"
    samples = general_text_samples(seed=seed)
    source = f"{len(samples)} wordfreq pseudo-sentences"
    if wrapper_class(model) is LightTokenForCausalLM and can_write_calibration_text(model, tokenizer):
        written = model_written_texts(model, tokenizer, seed=seed, progress=progress)
        wrote = f"{len(written)} texts the model wrote (up to {MODEL_WRITTEN_TOKENS} tokens)"
        return written + samples, f"{wrote} and {source}"
    return samples, source
