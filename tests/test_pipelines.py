"""transformers pipelines run a saved compressed checkpoint (remote code) like the model itself."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_SCHEDULE
from transformers import (
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    Trainer,
    TrainingArguments,
    pipeline,
)

import lighttoken_hf as lt

TEXTS = ["the water is good", "they said what they could see from the house"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def _save(model_cls, config, tokenizer, folder):
    torch.manual_seed(0)
    model = lt.compress(
        model_cls(config), ratio=4, tokenizer=tokenizer, schedule=FAST_SCHEDULE, progress=False
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval()


def test_feature_extraction_pipeline(tiny_bert_config, tokenizer, tmp_path):
    model = _save(BertModel, tiny_bert_config, tokenizer, tmp_path)
    pipe = pipeline("feature-extraction", model=str(tmp_path), trust_remote_code=True)
    assert type(pipe.model).__name__ == "LightTokenModel"
    for text in TEXTS:
        got = torch.tensor(pipe(text))[0]
        with torch.no_grad():
            want = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_text_classification_pipeline(tiny_bert_config, tokenizer, tmp_path):
    tiny_bert_config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    tiny_bert_config.label2id = {v: k for k, v in tiny_bert_config.id2label.items()}
    model = _save(BertForSequenceClassification, tiny_bert_config, tokenizer, tmp_path)
    pipe = pipeline("text-classification", model=str(tmp_path), trust_remote_code=True, top_k=None)
    assert type(pipe.model).__name__ == "LightTokenForSequenceClassification"
    for text, rows in zip(TEXTS, pipe(TEXTS), strict=True):
        got = {row["label"]: row["score"] for row in rows}
        with torch.no_grad():
            probs = model(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
        want = {model.config.backbone.id2label[i]: float(p) for i, p in enumerate(probs)}
        assert got.keys() == want.keys() == {"negative", "neutral", "positive"}
        for label, score in want.items():
            assert got[label] == pytest.approx(score, rel=1e-5)


# ------------------------------------------------------------------ Trainer: gradient accumulation
def _examples(token_labels: bool) -> list[dict]:
    """8 examples of lengths 3..10; token labels are -100 on [CLS] (and on padding, added by the collator)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        ids = [2] + torch.randint(5, 200, (2 + i,), generator=g).tolist()
        labels = (
            [-100] + torch.randint(0, 2, (len(ids) - 1,), generator=g).tolist() if token_labels else i % 2
        )
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _collate(rows: list[dict]) -> dict:
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    if isinstance(rows[0]["labels"], int):
        labels = torch.tensor([r["labels"] for r in rows])
    else:
        labels = torch.full_like(ids, -100)
        for i, r in enumerate(rows):
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _first_step_loss(model_cls, config, tmp_path, accumulation: int, batch: int) -> float:
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0  # same numbers however batched
    torch.manual_seed(0)
    model = lt.compress(model_cls(config), ratio=4, schedule=FAST_SCHEDULE, progress=False)
    args = TrainingArguments(
        output_dir=str(tmp_path / f"run{accumulation}"),
        report_to=[],
        use_cpu=True,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        seed=0,
    )
    token_labels = model_cls is BertForTokenClassification
    trainer = Trainer(model=model, args=args, train_dataset=_examples(token_labels), data_collator=_collate)
    trainer.train()
    return next(h["loss"] for h in trainer.state.log_history if "loss" in h)


def test_gradient_accumulation_matches_a_full_batch_sequence_classification(tiny_bert_config, tmp_path):
    # the backbone's classification loss is a per-micro-batch mean that ignores num_items_in_batch, so
    # the wrapper must not claim to accept loss kwargs (else Trainer skips dividing by the steps: 2x loss)
    accumulated = _first_step_loss(BertForSequenceClassification, tiny_bert_config, tmp_path, 2, 2)
    full = _first_step_loss(BertForSequenceClassification, tiny_bert_config, tmp_path, 1, 4)
    assert accumulated == pytest.approx(full, rel=1e-5)


def test_gradient_accumulation_matches_a_full_batch_token_classification(tiny_bert_config, tmp_path):
    # token losses: micro-batches hold different numbers of labelled tokens (-100 on [CLS] and padding),
    # so only sum / num_items_in_batch (which Trainer passes to the wrapper) equals the full-batch mean
    accumulated = _first_step_loss(BertForTokenClassification, tiny_bert_config, tmp_path, 2, 2)
    full = _first_step_loss(BertForTokenClassification, tiny_bert_config, tmp_path, 1, 4)
    assert accumulated == pytest.approx(full, rel=1e-5)


def test_token_classification_loss_with_num_items_in_batch(tiny_bert_config):
    torch.manual_seed(0)
    model = lt.compress(
        BertForTokenClassification(tiny_bert_config), ratio=4, schedule=FAST_SCHEDULE, progress=False
    ).eval()
    batch = _collate(_examples(token_labels=True)[:3])
    labelled = int(batch["labels"].ne(-100).sum())
    with torch.no_grad():
        mean = model(**batch).loss
        summed = model(**batch, num_items_in_batch=torch.tensor(labelled)).loss
        as_tuple = model(**batch, num_items_in_batch=torch.tensor(labelled), return_dict=False)
    torch.testing.assert_close(summed, mean)
    torch.testing.assert_close(as_tuple[0], mean)
