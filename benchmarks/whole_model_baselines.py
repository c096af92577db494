"""Whole-model quantization baselines: one library's weight-only quantization of every Linear layer and of the
token matrix too ("everything"), the rows LightToken plus a quantized backbone is compared against.

* :func:`int8_everything`: torchao int8 weight-only on every Linear (one scale per output channel) and int8
  with one scale per row on the input embedding.
* :func:`int4_everything`: compressed-tensors int4 (groups of 32, fp16 scales: ``quantize_backbone="int4"``'s
  format) on every Linear and on the input embedding, the Linear layers rounded against their inputs on the
  calibration batches as ``quantize_backbone="int4"`` does; packed (unpacked on the first forward).

A tied output layer (a decoder LM's, sharing the input embedding's matrix) is quantized once, with the input
embedding: it is replaced by :class:`TiedOutput`, which reads the (quantized) input embedding's weight, so the
model stores the matrix once and ``model_parts_nbytes`` counts it once, as a tied checkpoint would.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class TiedOutput(nn.Module):
    """An output layer that multiplies by the input embedding's weight, whatever form it is held in (a torchao
    quantized tensor, or the dense weight compressed-tensors unpacks on the first forward). It owns no
    parameter: the embedding stays the matrix's one owner."""

    def __init__(self, embedding: nn.Module, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # not a submodule: not stored twice
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.embedding.weight, self.bias)


def untie_output(model: Any) -> Any:
    """``model`` (in place) with a tied output layer replaced by :class:`TiedOutput` (unchanged without one)."""
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        model.set_output_embeddings(TiedOutput(embedding, output.bias))
    return model


def int8_everything(model: Any) -> Any:
    """A copy of ``model``: torchao int8 weight-only on every Linear, and int8 with one scale per row on the
    input embedding (a tied output layer included, stored once)."""
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerAxis, quantize_

    quantized = untie_output(copy.deepcopy(model))
    quantize_(quantized, Int8WeightOnlyConfig())
    embedding = quantized.get_input_embeddings()
    quantize_(quantized, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
              filter_fn=lambda module, _: module is embedding)  # fmt: skip
    return quantized


def int4_everything(model: Any, calibration: list) -> Any:
    """A copy of ``model``: compressed-tensors int4 on every Linear and on the input embedding (a tied output
    layer included, stored once), packed (unpacked on the first forward); the Linear layers rounded against
    their inputs on ``calibration`` as ``quantize_backbone="int4"`` does."""
    from lighttoken_hf.compressor.backbone import input_hessians, pack_int4

    quantized = untie_output(copy.deepcopy(model))
    hessians = input_hessians(quantized, calibration)
    targets = ("Linear", type(quantized.get_input_embeddings()).__name__)
    pack_int4(quantized, targets=targets, hessians=hessians).add_decompress_hook(quantized)
    return quantized
