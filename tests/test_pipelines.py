"""transformers pipelines run a saved compressed checkpoint (remote code) like the model itself."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import FAST_SCHEDULE
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
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
def _examples(kind: str) -> list[dict]:
    """8 examples of lengths 3..10 with labels for ``kind``.

    ``"sequence"``: one class per example. ``"token"``: a class per token, -100 on [CLS] (and on padding,
    added by the collator). ``"masked-lm"``: the token id at a random ~30% of the positions (at least one),
    -100 elsewhere, so micro-batches hold different numbers of labelled tokens. ``"causal-lm"``: the ids.
    """
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        ids = [2] + torch.randint(5, 200, (2 + i,), generator=g).tolist()
        if kind == "sequence":
            labels = i % 2
        elif kind == "token":
            labels = [-100] + torch.randint(0, 2, (len(ids) - 1,), generator=g).tolist()
        elif kind == "masked-lm":
            chosen = torch.rand(len(ids), generator=g) < 0.3
            chosen[1 + int(torch.randint(0, len(ids) - 1, (1,), generator=g))] = True
            chosen[0] = False
            labels = [t if c else -100 for t, c in zip(ids, chosen.tolist(), strict=True)]
        else:
            labels = list(ids)
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


def _tiny_gpt2_config():
    return GPT2Config(vocab_size=200, n_embd=32, n_layer=1, n_head=2, n_positions=64, pad_token_id=0)


#: case -> (model class, label kind); causal-lm runs on a tiny GPT-2, the others on the tiny BERT
ACCUMULATION_CASES = {
    "sequence-classification": (BertForSequenceClassification, "sequence"),
    "token-classification": (BertForTokenClassification, "token"),
    "masked-lm": (BertForMaskedLM, "masked-lm"),
    "causal-lm": (GPT2LMHeadModel, "causal-lm"),
}


def _first_step_loss(case: str, config, tmp_path, accumulation: int, batch: int) -> float:
    model_cls, kind = ACCUMULATION_CASES[case]
    dropouts = ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop")
    dropouts += ("attn_pdrop",)
    for name in dropouts:
        if hasattr(config, name):
            setattr(config, name, 0.0)  # same numbers however batched
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
    trainer = Trainer(model=model, args=args, train_dataset=_examples(kind), data_collator=_collate)
    trainer.train()
    return next(h["loss"] for h in trainer.state.log_history if "loss" in h)


@pytest.mark.parametrize("case", list(ACCUMULATION_CASES))
def test_gradient_accumulation_matches_a_full_batch(case, tiny_bert_config, tmp_path):
    """The loss Trainer reports with gradient_accumulation_steps=2 equals the loss of one batch of 4.

    Sequence classification: the backbone's loss is a per-micro-batch mean that ignores
    num_items_in_batch, so the wrapper must not claim to accept loss kwargs (else Trainer skips dividing
    by the steps: 2x loss). Token classification and masked LM: micro-batches hold different numbers of
    labelled tokens, so only sum / num_items_in_batch (which Trainer passes to the wrapper) equals the
    full-batch mean. Causal LM: the backbone's own loss uses num_items_in_batch.
    """
    config = _tiny_gpt2_config() if case == "causal-lm" else tiny_bert_config
    if case != "sequence-classification":  # the case the test is about: unequal label counts
        kind = ACCUMULATION_CASES[case][1]
        counts = [int(_collate(_examples(kind)[i : i + 2])["labels"].ne(-100).sum()) for i in range(0, 8, 2)]
        assert len(set(counts)) == len(counts), counts
    accumulated = _first_step_loss(case, config, tmp_path, 2, 2)
    full = _first_step_loss(case, copy.deepcopy(config), tmp_path, 1, 4)
    assert accumulated == pytest.approx(full, rel=1e-5)


def test_token_classification_loss_with_num_items_in_batch(tiny_bert_config):
    torch.manual_seed(0)
    model = lt.compress(
        BertForTokenClassification(tiny_bert_config), ratio=4, schedule=FAST_SCHEDULE, progress=False
    ).eval()
    batch = _collate(_examples("token")[:3])
    labelled = int(batch["labels"].ne(-100).sum())
    with torch.no_grad():
        mean = model(**batch).loss
        summed = model(**batch, num_items_in_batch=torch.tensor(labelled)).loss
        as_tuple = model(**batch, num_items_in_batch=torch.tensor(labelled), return_dict=False)
    torch.testing.assert_close(summed, mean)
    torch.testing.assert_close(as_tuple[0], mean)
