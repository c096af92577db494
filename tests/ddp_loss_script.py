"""Token-classification training loss under 2-process DDP (gloo), launched by tests/test_ddp.py.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node N tests/ddp_loss_script.py OUT``

Every rank builds the same seeded, dropout-free compressed tiny BERT token classifier and takes one
``Trainer`` step (learning rate 0) over four examples with unequal numbers of labelled tokens, so the
global batch is the whole dataset. Rank 0 writes ``OUT/loss_world<N>.json`` with the logged loss and the
exact loss (sum of the token losses / number of labelled tokens, from a plain forward).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tiny_models import tiny_bert_config  # noqa: E402
from transformers import BertForTokenClassification, Trainer, TrainingArguments  # noqa: E402

import lighttoken_hf as lt  # noqa: E402


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = tiny_bert_config(num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = lt.compress(BertForTokenClassification(config), ratio=4, schedule={"max_epochs": 1}, progress=False)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for labelled in (1, 7, 2, 8):  # unequal labelled tokens per example (and per rank)
        labels = torch.full((8,), -100)
        labels[:labelled] = torch.randint(0, 3, (labelled,), generator=gen)
        rows.append({"input_ids": torch.randint(5, 200, (8,), generator=gen), "labels": labels})
    args = TrainingArguments(
        output_dir=os.path.join(out, f"trainer{world}"),
        per_device_train_batch_size=4 // world,
        max_steps=1,
        learning_rate=0.0,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        ddp_backend="gloo" if world > 1 else None,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[lt.LightTokenCallback()])
    trainer.train()
    if trainer.is_world_process_zero():
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.stack([r["input_ids"] for r in rows])).logits
        labels = torch.stack([r["labels"] for r in rows])
        exact = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
        with open(os.path.join(out, f"loss_world{world}.json"), "w") as handle:
            json.dump({"logged": logged, "exact": exact.item()}, handle)


if __name__ == "__main__":
    from lighttoken_hf.tasks.distributed import end_process_group

    main(sys.argv[1])
    end_process_group()
