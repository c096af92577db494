"""Calibration text a causal LM writes itself: seeded, within its length, the default of an int4 decoder's
rounding (and only where the model can write it)."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_SCHEDULE
from tiny_models import IdTokenizer, tiny_bert_config
from transformers import AutoModelForCausalLM, LlamaConfig

import lighttoken_hf as lt
from lighttoken_hf.cards import card_facts
from lighttoken_hf.compressor.calibration import model_written_texts
from lighttoken_hf.compressor.frequencies import general_text_samples

pytestmark = pytest.mark.usefixtures("single_thread")


class WritingTokenizer(IdTokenizer):
    """:class:`IdTokenizer` with a BOS token to start from and the batch decoding ``generate`` output needs."""

    bos_token_id = 1

    def batch_decode(self, rows, skip_special_tokens=True) -> list[str]:
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [" ".join(str(int(i)) for i in row if int(i) not in special) for row in rows]


def _llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def test_model_written_texts_are_seeded_and_leave_the_global_random_state_alone():
    model, tok = _llama(), WritingTokenizer(300)
    state = torch.get_rng_state()
    texts = model_written_texts(model, tok, count=5, tokens=6, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(texts) == 5 and all(1 <= len(t.split()) <= 6 for t in texts)
    assert texts == model_written_texts(model, tok, count=5, tokens=6, seed=0)
    assert texts != model_written_texts(model, tok, count=5, tokens=6, seed=1)


def test_a_model_that_cannot_write_is_a_clear_error(tiny_bert, tiny_tokenizer):
    with pytest.raises(ValueError, match="cannot write calibration text.*calibration_texts="):
        model_written_texts(tiny_bert, tiny_tokenizer, count=2, tokens=4)
    with pytest.raises(ValueError, match="cannot write calibration text"):
        model_written_texts(_llama(), IdTokenizer(300), count=2, tokens=4)  # no BOS token to start from
    with pytest.raises(ValueError, match="must be >= 1"):
        model_written_texts(_llama(), WritingTokenizer(300), count=0)


def test_an_int4_decoder_is_calibrated_on_text_it_wrote_by_default():
    """Without ``calibration_texts`` the int4 rounding reads the text the original model writes and the
    pseudo-sentences (the same backbone as when those texts are given), not the pseudo-sentences alone."""
    tok = WritingTokenizer(300)
    options = {"quantize_backbone": "int4", "sensitivity_weighted": False, "schedule": FAST_SCHEDULE,
               "tokenizer": tok, "progress": False}  # fmt: skip
    default = lt.compress(_llama(), 4, **options)
    written = model_written_texts(_llama(), tok) + general_text_samples()
    given = lt.compress(_llama(), 4, calibration_texts=written, **options)
    pseudo = lt.compress(_llama(), 4, calibration_texts=general_text_samples(), **options)
    assert default.compression_report.backbone_rounding.startswith("GPTQ on 128 texts the model wrote")
    assert "int4 backbone rounding" in default.compression_report.summary()
    rows = dict(card_facts(default)["sections"]["size"])
    assert rows["int4 rounding"] == default.compression_report.backbone_rounding
    int6 = "; grouped-query value projections in int6: 1"  # the tiny Llama's one value projection
    assert given.compression_report.backbone_rounding == f"GPTQ on {len(written)} given texts{int6}"
    states = [m.state_dict() for m in (default, given, pseudo)]
    packed = [k for k in states[0] if k.endswith("weight_packed")]
    assert packed and all(torch.equal(states[0][k], states[1][k]) for k in packed)
    assert any(not torch.equal(states[0][k], states[2][k]) for k in packed)


def test_an_int4_encoder_is_calibrated_on_pseudo_sentences(tiny_tokenizer):
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128))
    compressed = lt.compress(model.eval(), 4, quantize_backbone="int4", sensitivity_weighted=False,
                             tokenizer=tiny_tokenizer, schedule=FAST_SCHEDULE, progress=False)  # fmt: skip
    assert compressed.compression_report.backbone_rounding == "GPTQ on 256 wordfreq pseudo-sentences"
