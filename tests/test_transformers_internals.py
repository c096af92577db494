"""The private transformers attributes the remote-code core relies on, pinned: where transformers renames or
drops one, this file fails first and names it (docs/architecture.md lists each with the reason no public
API does the job)."""

from __future__ import annotations

import torch
from conftest import FAST_SCHEDULE
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    LlamaConfig,
)

import lighttoken_hf as lt


def test_auto_class_model_mapping_names_the_backbone_class():
    """``AutoX._model_mapping[ConfigClass]``: which backbone class a LightToken head wraps (and its
    ``base_model_prefix`` for the key renaming between base and head checkpoints)."""
    assert AutoModel._model_mapping[BertConfig] is BertModel
    assert AutoModelForSequenceClassification._model_mapping[BertConfig] is BertForSequenceClassification
    assert BertForSequenceClassification.base_model_prefix == "bert"


def test_tied_weight_keys_are_recomputed_after_untying():
    """``get_expanded_tied_weights_keys`` / ``all_tied_weights_keys``: after the LM head is replaced by the
    compressed one, transformers must not tie (copy) the old dense output weight into it."""
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert model.get_expanded_tied_weights_keys(all_submodels=True)  # tied before
    assert hasattr(model, "all_tied_weights_keys")
    compressed = lt.compress(model, ratio=4, schedule=FAST_SCHEDULE, progress=False)
    assert not compressed.backbone.get_expanded_tied_weights_keys(all_submodels=True)
    assert not compressed.backbone.all_tied_weights_keys


def test_weight_conversions_record_the_key_renaming(tiny_bert_config, tmp_path):
    """``_weight_conversions`` (with ``_original_source_patterns``): a head loaded from a base checkpoint
    through ``key_mapping`` must not save under the renamed keys."""
    torch.manual_seed(0)
    base = lt.compress(BertModel(tiny_bert_config), ratio=4, schedule=FAST_SCHEDULE, progress=False)
    base.save_pretrained(tmp_path / "base")
    head = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    assert hasattr(head, "_weight_conversions")
    head.save_pretrained(tmp_path / "head")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "head" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("backbone.bert.") for k in keys) and not any(
        k.startswith("backbone.encoder.") for k in keys
    )


def test_a_compressed_tensors_model_carries_its_compressor_and_is_saved_unpacked(tmp_path):
    """``model.hf_quantizer.compressor.compress_model``: the LightToken ``save_pretrained`` packs an int4
    backbone again through it, because transformers writes the unpacked weights of a model that ran a forward."""
    import json

    import pytest

    pytest.importorskip("compressed_tensors", reason="needs compressed-tensors: pip install compressed-tensors")
    from compressed_tensors.compressors import ModelCompressor

    from lighttoken_hf.compressor.backbone import pack_int4

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=128)).eval()  # fmt: skip
    compressor = pack_int4(model)
    model.save_pretrained(tmp_path / "packed")
    compressor.update_config(tmp_path / "packed")
    loaded = AutoModel.from_pretrained(tmp_path / "packed").eval()
    assert isinstance(loaded.hf_quantizer.compressor, ModelCompressor)
    with torch.no_grad():
        loaded(input_ids=torch.tensor([[1, 2, 3]]))  # unpacks the weights in memory
    loaded.save_pretrained(tmp_path / "resaved")
    config = json.loads((tmp_path / "resaved" / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"]["quantization_status"] == "decompressed"  # what the core repacks
