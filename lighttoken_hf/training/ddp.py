"""DDP and the compressed embedding: its buffers are constants that DDP must not broadcast."""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from ..core.lighttoken_codec import LightTokenEmbedding

__all__ = ["skip_constant_buffers_in_ddp"]


def skip_constant_buffers_in_ddp(model: torch.nn.Module) -> list[str]:
    """Keep DDP from broadcasting the compressed embedding's buffers; returns their names.

    A ``LightTokenEmbedding``'s buffers (packed codes, coverage masks, the padding row, int8 decoder
    directions) are constants that every rank loads (or compresses) identically, so DDP need not
    broadcast them from rank 0 when it wraps the model; parameters (factors, decoder scales) are still
    synchronised. Call before the model is wrapped.
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
