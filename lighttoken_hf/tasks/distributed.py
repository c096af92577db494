"""Small helpers for scripts that run under ``torchrun`` / ``accelerate launch`` (one process per rank).

Only rank 0 writes shared outputs (:func:`is_main_process`); :func:`parameter_digest` fingerprints a
model's parameters and buffers so that runs can check every rank ended with identical weights.
"""

from __future__ import annotations

import hashlib
import os

import torch

from ..jsonio import write_json

__all__ = [
    "end_process_group",
    "is_main_process",
    "parameter_digest",
    "process_rank",
    "world_size",
    "write_json",
]


def process_rank() -> int:
    """Global rank of this process (0 without a distributed launcher)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (1 without a distributed launcher)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def end_process_group() -> None:
    """Wait for every rank, then destroy the process group (a no-op without one).

    Call it last: a rank that exits while the gloo backend of an unfinished peer is still live can
    abort at interpreter exit ("terminate called without an active exception").
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0, the only process that writes shared outputs."""
    return process_rank() == 0


def parameter_digest(model: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter and buffer (name -> hex digest of dtype, shape and bytes).

    DDP wrappers (``.module``) are unwrapped. Two models have equal digests exactly when every tensor
    is bit-identical.
    """
    model = getattr(model, "module", model)
    digests = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        h = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        digests[name] = h.hexdigest()
    return digests


