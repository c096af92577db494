"""The LightToken wrapper behaves like the backbone for code that inspects or copies it."""

from __future__ import annotations

import copy
import inspect

import torch
from conftest import FAST_SCHEDULE
from transformers import BertForSequenceClassification

import lighttoken_hf as lt


def _compressed_classifier(tiny_bert_config):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config)
    return lt.compress(model, ratio=4, schedule=FAST_SCHEDULE, progress=False).eval()


def test_forward_exposes_the_backbone_signature(tiny_bert_config):
    model = _compressed_classifier(tiny_bert_config)
    params = inspect.signature(model.forward).parameters
    backbone_params = inspect.signature(model.backbone.forward).parameters
    assert list(params) == list(backbone_params)
    assert {"input_ids", "attention_mask", "labels"} <= set(params)


def test_trainer_keeps_the_model_input_columns(tiny_bert_config, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _compressed_classifier(tiny_bert_config)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    trainer._set_signature_columns_if_needed()
    assert {"input_ids", "attention_mask", "label", "labels"} <= set(trainer._signature_columns)


def test_deepcopy_runs_its_own_backbone(tiny_bert_config):
    model = _compressed_classifier(tiny_bert_config)
    clone = copy.deepcopy(model)
    ids = torch.randint(0, tiny_bert_config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(input_ids=ids).logits, clone(input_ids=ids).logits)
    with torch.no_grad():
        clone.backbone.classifier.weight.add_(1.0)
    assert not torch.equal(model(input_ids=ids).logits, clone(input_ids=ids).logits)
