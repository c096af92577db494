"""The tiny BERT configuration and the id tokenizer the unit tests and the multi-process scripts share
(imported as a sibling: pytest and ``torchrun tests/<script>.py`` both put this folder on ``sys.path``)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import BertConfig


def tiny_bert_config(**overrides: Any) -> BertConfig:
    """A 1-layer, 32-wide BERT config over 200 token ids (``overrides`` change or add fields)."""
    fields: dict[str, Any] = {
        "vocab_size": 200,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
    }
    fields.update(overrides)
    return BertConfig(**fields)


class IdTokenizer:
    """Whitespace-separated integers as token ids: enough for the LM metric and the LM report."""

    pad_token = "<pad>"
    pad_token_id = 0
    eos_token_id = 2
    all_special_ids = [0, 2]

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab

    def _id(self, token: str) -> int:
        return int(token) % self.vocab if token.isdigit() else 3 + sum(token.encode()) % (self.vocab - 3)

    def __call__(self, texts, padding=False, truncation=True, max_length=64, return_tensors=None, **_):
        batch = [texts] if isinstance(texts, str) else list(texts)
        rows = [[self._id(t) for t in text.split()][:max_length] or [3] for text in batch]
        if return_tensors is None:
            return {"input_ids": rows}
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return IdBatch(input_ids=ids, attention_mask=mask)

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(str(int(i)) for i in ids)


class IdBatch(dict):
    """A tokenizer output that moves to a device."""

    def to(self, device):
        return IdBatch({k: v.to(device) for k, v in self.items()})


def id_texts(vocab: int, n: int = 24, seed: int = 0) -> list[str]:
    """``n`` texts of 20 random ids each (3 .. vocab - 1) for :class:`IdTokenizer`."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(str(int(t)) for t in torch.randint(3, vocab, (20,), generator=g)) for _ in range(n)]
