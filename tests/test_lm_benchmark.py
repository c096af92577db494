"""Helpers of benchmarks/lm_benchmark.py: the alternatives' round trips and the tied-matrix swap (no LM scoring)."""

from __future__ import annotations

import pytest
import torch
from conftest import load_benchmark
from transformers import AutoModelForCausalLM, LlamaConfig

pytest.importorskip("gguf", reason="the GGUF baselines need `pip install gguf` (in the [test] extra)")
lm_benchmark = load_benchmark("lm_benchmark")


def _matrix(rows: int = 256, dim: int = 64) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))


def test_gguf_round_trip_sizes_and_errors_follow_the_block_types():
    e = _matrix()
    errors = {}
    for name, bits_per_value in (("Q8_0", 8.5), ("Q5_0", 5.5), ("Q4_0", 4.5)):
        rebuilt, nbytes = lm_benchmark.gguf_roundtrip(e, name)
        assert rebuilt.shape == e.shape and rebuilt.dtype == torch.float32
        assert nbytes * 8 == pytest.approx(e.numel() * bits_per_value)  # 32-value blocks, one fp16 scale each
        errors[name] = float((rebuilt - e).norm() / e.norm())
    assert errors["Q8_0"] < 0.01 < errors["Q5_0"] < errors["Q4_0"] < 0.2


def test_every_alternative_rebuilds_the_matrix_in_fewer_bytes():
    e = _matrix()
    rows = list(lm_benchmark.baseline_matrices(e, [16]))
    names = [name for name, *_ in rows]
    assert names[:3] == ["gguf-Q8_0", "gguf-Q5_0", "gguf-Q4_0"]
    assert {"int8-row", "int4-row", "int4-g32", "int2-g32", "svd-16x"} <= set(names)
    for name, rebuilt, nbytes, seconds in rows:
        assert rebuilt.shape == e.shape, name
        assert 0 < nbytes < e.numel() * 4, name
        assert float((rebuilt - e).norm() / e.norm()) < 1.0, name
        assert seconds >= 0


def test_the_swap_replaces_the_tied_matrix_in_a_copy():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    before = model.get_input_embeddings().weight.detach().clone()
    new = torch.randn(64, 16)
    swapped = lm_benchmark.with_matrix(model, new)
    assert torch.equal(swapped.get_input_embeddings().weight, new)
    assert torch.equal(swapped.get_output_embeddings().weight, new)  # tied: the logits read it too
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_without_the_fixed_types_only_the_ratio_baselines_run():
    names = [name for name, *_ in lm_benchmark.baseline_matrices(_matrix(), [16, 50], fixed=False)]
    assert names[0] == "svd-16x"
    assert not any(name.startswith(("gguf", "int")) for name in names)
    assert {"svd-16x", "svd-50x"} <= set(names)
