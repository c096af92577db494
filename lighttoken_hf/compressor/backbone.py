"""Whole-model compression: the backbone's Linear weights by torchao weight-only quantization, through
transformers' own ``TorchAoConfig`` integration.

Why torchao, and why through transformers: transformers applies a ``TorchAoConfig`` while it loads weights,
saves the quantized tensors to safetensors and rebuilds them from ``config.json``'s ``quantization_config``
on ``from_pretrained``, so a checkpoint quantized here reloads anywhere with transformers and torchao
installed (lighttoken_hf not needed: the remote code does the rest). Quantizing a live model with
``torchao.quantize_`` instead leaves tensor subclasses that ``save_pretrained`` cannot write.

``"int8"``: symmetric int8 weights with one scale per output channel (``Int8WeightOnlyConfig``) on every
``nn.Linear`` of the backbone; the compressed token matrix (not a Linear), norms, biases and position
embeddings keep their format. torchao 0.18 has no 4-bit packing that runs on a CPU without its ``mslk``
kernels, so ``"int4"`` is not offered yet.
"""

from __future__ import annotations

import tempfile
from typing import Any

from .settings import BACKBONE_QUANTIZATIONS

__all__ = ["quantize_backbone"]


def quantize_backbone(model: Any, kind: str) -> Any:
    """``model`` (a LightToken model) with its backbone's Linear weights quantized to ``kind``: saved, then
    loaded again through ``TorchAoConfig`` (see the module docstring). The returned model is a new object."""
    if kind not in BACKBONE_QUANTIZATIONS:
        raise ValueError(f"quantize_backbone must be one of {list(BACKBONE_QUANTIZATIONS)} or None, got {kind!r}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as err:
        raise ImportError("quantize_backbone needs torchao: pip install 'lighttoken-hf[quantize]'") from err
    from transformers import TorchAoConfig

    config = TorchAoConfig(Int8WeightOnlyConfig())
    with tempfile.TemporaryDirectory(prefix="lighttoken-quantize-") as folder:
        model.save_pretrained(folder)
        quantized = type(model).from_pretrained(folder, quantization_config=config)
    return quantized.train(model.training)
