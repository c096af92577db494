"""2-process DDP run of LightTokenCallback on CPU (gloo), launched by tests/test_callback.py.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_callback_script.py OUT``

For each policy (frozen, decoders, unfreeze after 2 steps) every rank compresses the same tiny BERT
classifier (seeded), trains it for a few steps with ``transformers.Trainer`` on its own shard of a tiny
dataset and writes ``OUT/<policy>/initial_rank<r>.safetensors`` and ``OUT/<policy>/final_rank<r>.safetensors``
(the full ``state_dict``). The test compares the ranks and the embedding tensors. Finally it checks that
``ddp_find_unused_parameters=False`` with the frozen policy is refused and writes ``OUT/errors_rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny_models import tiny_bert_config  # noqa: E402
from transformers import BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

import lighttoken_hf as lt  # noqa: E402

POLICIES = {"frozen": {}, "decoders": {"policy": "decoders"}, "schedule": {"unfreeze_at_step": 2}}


def tiny_model() -> lt.LightTokenForSequenceClassification:
    config = tiny_bert_config(num_labels=2)
    torch.manual_seed(0)
    return lt.compress(
        BertForSequenceClassification(config),
        ratio=4,
        svd_rank=4,
        frequency_aware=False,
        schedule={"max_epochs": 2},
        progress=False,
    )


def tiny_dataset() -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (16, 8), generator=g)
    ids[:, 0] = 2
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * 16, "labels": (ids[:, 1] % 2).tolist()}
    )


def training_args(out: str, **kwargs: object) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out,
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        save_strategy="no",
        logging_steps=2,
        use_cpu=True,
        ddp_backend="gloo",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        **kwargs,
    )


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def main(out: str) -> None:
    torch.set_num_threads(1)
    dataset = tiny_dataset()
    rank = None
    for name, kwargs in POLICIES.items():
        model = tiny_model()
        initial = snapshot(model)
        folder = os.path.join(out, name)
        trainer = Trainer(
            model=model,
            args=training_args(folder),
            train_dataset=dataset,
            callbacks=[lt.LightTokenCallback(**kwargs)],
        )
        rank = trainer.args.process_index
        if trainer.args.world_size != 2:
            raise SystemExit(f"expected 2 processes, got world_size={trainer.args.world_size}")
        trainer.train()
        os.makedirs(folder, exist_ok=True)
        save_file(initial, os.path.join(folder, f"initial_rank{rank}.safetensors"))
        save_file(snapshot(model), os.path.join(folder, f"final_rank{rank}.safetensors"))
    errors = {}
    try:
        Trainer(
            model=tiny_model(),
            args=training_args(os.path.join(out, "refused"), ddp_find_unused_parameters=False),
            train_dataset=dataset,
            callbacks=[lt.LightTokenCallback()],
        )
    except ValueError as err:
        errors["find_unused_false"] = str(err)
    with open(os.path.join(out, f"errors_rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(errors, f)


if __name__ == "__main__":
    from lighttoken_hf.tasks.distributed import end_process_group

    main(sys.argv[1])
    end_process_group()
