"""DDP: a frequency-aware compressed model wraps (constant buffers skipped) and token losses stay exact."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import FAST_SCHEDULE
from torch.nn.parallel import DistributedDataParallel
from transformers import BertModel

import lighttoken_hf
from lighttoken_hf.training.ddp import skip_constant_buffers_in_ddp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gloo_group():
    """A one-process gloo group: DDP still broadcasts every buffer from rank 0 when it wraps a model."""
    store = dist.TCPStore("127.0.0.1", _free_port(), 1, is_master=True)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _frequency_aware(tiny_bert_config, gen):
    """A model whose vocabulary is large enough for frequency tiers (and so coverage masks)."""
    config = copy.deepcopy(tiny_bert_config)
    config.vocab_size = 4000
    torch.manual_seed(0)
    vocab = config.vocab_size
    zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float32)[torch.randperm(vocab, generator=gen)]
    model = lighttoken_hf.compress(
        BertModel(config), ratio=8, token_frequencies=zipf, schedule=FAST_SCHEDULE, progress=False
    )
    embedding = model.get_input_embeddings()
    assert min(embedding.stage_rows) < vocab and embedding.row_index == "coverage"
    return model


def test_coverage_masks_and_int8_decoders_broadcast_and_ddp_wraps_without_help(
    gloo_group, tiny_bert_config, gen, id_batch
):
    model = _frequency_aware(tiny_bert_config, gen)
    embedding = model.get_input_embeddings()
    assert {t.dtype for _, t in embedding.named_buffers()} == {torch.uint8, torch.int8, torch.float16}
    wrapped = DistributedDataParallel(model, find_unused_parameters=True)
    wrapped(**id_batch).last_hidden_state.sum().backward()
    assert embedding.decoder_0_scale.grad is not None and embedding.decoder_0_bias.grad is not None


def test_skipping_the_constant_buffers_lets_ddp_wrap_and_train(gloo_group, tiny_bert_config, gen, id_batch):
    model = _frequency_aware(tiny_bert_config, gen)
    names = skip_constant_buffers_in_ddp(model)
    embedding = model.get_input_embeddings()
    assert {n.rsplit(".", 1)[-1] for n in names} == {n for n, _ in embedding.named_buffers()}
    assert all(dict(model.named_buffers())[n] is not None for n in names)  # full names of real buffers

    wrapped = DistributedDataParallel(model, find_unused_parameters=True)
    wrapped(**id_batch).last_hidden_state.sum().backward()
    assert embedding.decoder_0_scale.grad is not None  # parameters are still synchronised and trained


@pytest.mark.slow
def test_token_loss_under_ddp_equals_the_exact_loss(tmp_path):
    """2 processes with unequal labelled tokens per rank log the exact loss (num_items_in_batch across ranks)."""
    script = Path(__file__).with_name("ddp_loss_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for launch in ([], ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]):
        cmd = [sys.executable, *launch, str(script), str(tmp_path)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    single, ddp = (json.loads((tmp_path / f"loss_world{n}.json").read_text()) for n in (1, 2))
    assert single["exact"] == pytest.approx(ddp["exact"], abs=1e-6)
    assert single["logged"] == pytest.approx(single["exact"], rel=1e-5)
    assert ddp["logged"] == pytest.approx(ddp["exact"], rel=1e-5)
