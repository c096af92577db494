"""benchmarks/whole_model_baselines.py: int8/int4 of everything, a tied token matrix quantized and counted once."""

from __future__ import annotations

import pytest
import torch
from conftest import load_benchmark
from transformers import AutoModelForCausalLM, LlamaConfig

pytest.importorskip("torchao", reason="the int8 baseline needs torchao: pip install torchao")
pytest.importorskip("compressed_tensors", reason="the int4 baseline needs it: pip install compressed-tensors")
baselines = load_benchmark("whole_model_baselines")

VOCAB, DIM = 320, 64


@pytest.fixture(scope="module")
def tied_lm():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.lm_head.weight is model.get_input_embeddings().weight
    return model


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_everything_quantizes_a_tied_matrix_once_and_keeps_the_outputs(tied_lm, kind):
    from lighttoken_hf.compressor.backbone import INT4_GROUP_SIZE
    from lighttoken_hf.compressor.report import model_parts_nbytes

    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    if kind == "int8":
        quantized = baselines.int8_everything(tied_lm)
        # int8 codes, one float32 scale (torchao keeps scales in the weight's dtype) and int8 zero point per row
        matrix_nbytes = VOCAB * DIM + VOCAB * (4 + 1)
    else:
        quantized = baselines.int4_everything(tied_lm, [{"input_ids": ids}])
        # two codes a byte and one fp16 scale per group, plus the packed weight's shape (two int64)
        matrix_nbytes = VOCAB * DIM // 2 + VOCAB * DIM // INT4_GROUP_SIZE * 2 + 16
    parts = model_parts_nbytes(quantized)
    assert parts["token_matrix"] == matrix_nbytes  # the tied output layer stores nothing of its own
    assert parts["backbone"] < model_parts_nbytes(tied_lm)["backbone"] / (3 if kind == "int8" else 6)
    assert tied_lm.lm_head.weight is tied_lm.get_input_embeddings().weight  # the original is untouched
    reference, logits = _logits(tied_lm, ids), _logits(quantized, ids)
    assert torch.isfinite(logits).all()
    cosine = torch.nn.functional.cosine_similarity(logits.flatten(), reference.flatten(), dim=0)
    assert cosine > (0.999 if kind == "int8" else 0.95)
    if kind == "int4":  # the output layer reads the embedding compressed-tensors unpacked: the same matrix
        embedding = quantized.get_input_embeddings().weight
        assert torch.allclose(quantized.lm_head(torch.eye(DIM)), embedding.T)


def test_an_untied_output_layer_is_left_to_the_linear_quantization():
    from lighttoken_hf.compressor.report import model_parts_nbytes

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    quantized = baselines.int8_everything(model)
    assert isinstance(quantized.lm_head, torch.nn.Linear)
    parts = model_parts_nbytes(quantized)
    assert parts["token_matrix"] == 2 * (VOCAB * DIM + VOCAB * (4 + 1))  # input and output matrices, int8 each
