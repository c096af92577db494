"""DDP and the compressed embedding: its buffers are constants that DDP must not broadcast."""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from ..core.lighttoken_codec import LightTokenEmbedding

__all__ = ["skip_constant_buffers_in_ddp"]


def skip_constant_buffers_in_ddp(model: torch.nn.Module) -> list[str]:
    """Keep DDP from broadcasting the compressed embedding's buffers; returns their names.

    A ``LightTokenEmbedding``'s buffers (packed codes, coverage masks, the padding row and, in
    checkpoints made before coverage masks, an int16 ``token_rank``) are constants. DDP broadcasts
    every buffer from rank 0 when it wraps the model, and neither gloo nor NCCL can broadcast int16
    ("Invalid scalar type"), so the wrap fails for such an older frequency-aware checkpoint. Every
    rank loads (or compresses) the same checkpoint, so skipping them is safe; parameters (factors,
    decoders) are still synchronised. Call before the model is wrapped.
    """
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, LightTokenEmbedding):
            names += [f"{module_name}.{name}" for name, _ in module.named_buffers(recurse=False)]
    if names:
        existing = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, sorted({*existing, *names})
        )
    return names
