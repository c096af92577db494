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


def test_trainer_finds_the_label_names_of_every_head():
    """``Trainer`` reads label names from the *class* ``forward``; without them evaluate() has no loss."""
    from transformers.utils.generic import find_labels

    assert find_labels(lt.LightTokenModel) == []
    for cls in (
        lt.LightTokenForSequenceClassification,
        lt.LightTokenForTokenClassification,
        lt.LightTokenForMultipleChoice,
        lt.LightTokenForMaskedLM,
        lt.LightTokenForCausalLM,
    ):
        assert find_labels(cls) == ["labels"], cls
    assert find_labels(lt.LightTokenForQuestionAnswering) == ["start_positions", "end_positions"]


def test_trainer_evaluate_reports_the_loss_and_metrics(tiny_bert_config, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = _compressed_classifier(tiny_bert_config)
    gen = torch.Generator().manual_seed(2)
    rows = [
        {"input_ids": torch.randint(5, tiny_bert_config.vocab_size, (6,), generator=gen), "labels": i % 2}
        for i in range(8)
    ]
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction.label_ids.tolist())
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_eval_batch_size=4)
    metrics = Trainer(model=model, args=args, eval_dataset=rows, compute_metrics=compute_metrics).evaluate()
    assert seen == [[i % 2 for i in range(8)]]
    assert "eval_accuracy" in metrics and metrics["eval_loss"] > 0


def test_deepcopy_runs_its_own_backbone(tiny_bert_config):
    model = _compressed_classifier(tiny_bert_config)
    clone = copy.deepcopy(model)
    ids = torch.randint(0, tiny_bert_config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(input_ids=ids).logits, clone(input_ids=ids).logits)
    with torch.no_grad():
        clone.backbone.classifier.weight.add_(1.0)
    assert not torch.equal(model(input_ids=ids).logits, clone(input_ids=ids).logits)


# -------------------------------------------------------- from_pretrained(dtype=, attn_implementation=)
def _saved_base_model(tiny_bert, tmp_path):
    model = lt.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False).eval()
    model.save_pretrained(tmp_path)
    return model


def _sdpa_calls(model, batch, monkeypatch) -> int:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        model(**batch)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    return len(calls)


def test_attn_implementation_reaches_the_backbone(tiny_bert, id_batch, tmp_path, monkeypatch):
    from transformers import AutoModel

    model = _saved_base_model(tiny_bert, tmp_path)
    with torch.no_grad():
        expected = model(**id_batch).last_hidden_state
    for implementation in ("eager", "sdpa"):
        loaded = AutoModel.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        attention = loaded.backbone.encoder.layer[0].attention.self
        assert loaded.backbone.config._attn_implementation == implementation
        assert attention.config._attn_implementation == implementation
        calls = _sdpa_calls(loaded, id_batch, monkeypatch)
        assert (calls > 0) == (implementation == "sdpa"), (implementation, calls)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**id_batch).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_dtype_casts_the_backbone_and_keeps_the_compressed_storage(tiny_bert, id_batch, tmp_path):
    from transformers import AutoModel

    model = _saved_base_model(tiny_bert, tmp_path)
    stored = {k: v.clone() for k, v in model.get_input_embeddings().state_dict().items()}
    with torch.no_grad():
        expected = model(**id_batch).last_hidden_state

    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    embedding = loaded.get_input_embeddings()
    assert isinstance(embedding, lt.LightTokenEmbedding)
    assert loaded.dtype == torch.bfloat16
    assert loaded.backbone.config.dtype == torch.bfloat16
    backbone_params = {
        name: p.dtype
        for name, p in loaded.backbone.named_parameters()
        if not name.startswith("embeddings.word_")
    }
    assert backbone_params and set(backbone_params.values()) == {torch.bfloat16}, backbone_params
    # the compressed tensors keep their storage dtype and bits (fp16 factors, uint8 codes)
    reloaded = embedding.state_dict()
    assert reloaded.keys() == stored.keys()
    for key, tensor in stored.items():
        assert reloaded[key].dtype == tensor.dtype, key
        assert torch.equal(reloaded[key], tensor), key
    assert embedding.lowrank_left.dtype == torch.float16
    # the embedding's output, and so the whole forward, follows the compute dtype
    assert embedding(id_batch["input_ids"]).dtype == torch.bfloat16
    with torch.no_grad():
        out = loaded(**id_batch).last_hidden_state
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.1)

    auto = AutoModel.from_pretrained(tmp_path, dtype="auto")  # the dtype recorded at save time
    assert auto.dtype == torch.float32 and auto.get_input_embeddings().lowrank_left.dtype == torch.float16


def test_dtype_is_the_compute_dtype_not_the_fp16_storage(tiny_bert_config):
    """The compressed embedding's fp16 factors come last in iteration: ``.dtype`` (and the first parameter
    that sentence-transformers reads) is the backbone's compute dtype, for the wrapper and the backbone."""
    model = _compressed_classifier(tiny_bert_config)
    assert model.get_input_embeddings().lowrank_left.dtype == torch.float16
    assert model.dtype == model.backbone.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32
    assert model.to(torch.bfloat16).dtype == torch.bfloat16
    assert model.get_input_embeddings().lowrank_left.dtype == torch.float16  # storage kept
