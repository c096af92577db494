"""``generate()`` on a compressed causal LM: transformers' own generation loop, the backbone's cache."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationMixin, GPT2Config, GPT2LMHeadModel

import lighttoken_hf as lt

pytestmark = pytest.mark.usefixtures("single_thread")

NEW_TOKENS = 12


def _gpt2_config() -> GPT2Config:
    # a large init spread gives a random model peaked, varied next-token distributions (not one token again
    # and again)
    return GPT2Config(
        vocab_size=150,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.3,
    )


@pytest.fixture(scope="module")
def models():
    """(compressed LightTokenForCausalLM, dense GPT-2 whose tied embedding is the reconstructed matrix)."""
    torch.manual_seed(0)
    original = AutoModelForCausalLM.from_config(_gpt2_config()).eval()
    compressed = lt.compress(original, ratio=4, schedule={"max_epochs": 1}, progress=False).eval()
    dense = GPT2LMHeadModel(_gpt2_config()).eval()
    state = {k: v for k, v in compressed.backbone.state_dict().items() if "wte" not in k}
    missing, unexpected = dense.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"transformer.wte.weight", "lm_head.weight"}
    with torch.no_grad():
        dense.transformer.wte.weight.copy_(compressed.get_input_embeddings().weight)
    assert dense.lm_head.weight is dense.transformer.wte.weight  # tied: logits from the same matrix
    return compressed, dense


def _prompts() -> dict:
    """Two left-padded prompts (generation appends on the right)."""
    ids = torch.tensor([[0, 0, 17, 42, 99, 7], [5, 61, 3, 88, 120, 33]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def _manual_greedy(model, input_ids, attention_mask, steps: int) -> torch.Tensor:
    """Greedy decoding by full forward passes without a cache."""
    ids, mask = input_ids, attention_mask
    for _ in range(steps):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], dim=1), torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


def test_greedy_generate_equals_the_dense_model_and_a_manual_loop(models):
    compressed, dense = models
    assert isinstance(compressed, GenerationMixin) and type(compressed).can_generate()
    assert compressed.generation_config.eos_token_id == 2  # from the backbone config

    batch = _prompts()
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "eos_token_id": None}
    with torch.no_grad():
        got = compressed.generate(**batch, **kwargs)
        want = dense.generate(**batch, **kwargs)
        no_cache = compressed.generate(**batch, **kwargs, use_cache=False)
    assert got.shape == (2, batch["input_ids"].shape[1] + NEW_TOKENS)
    assert torch.equal(got, want)
    assert torch.equal(no_cache, got)
    assert torch.equal(_manual_greedy(compressed, **batch, steps=NEW_TOKENS), got)
    new = got[:, batch["input_ids"].shape[1]:]
    assert len(new.unique()) > 2, f"a degenerate continuation tests little: {new.tolist()}"


def test_generate_uses_the_backbone_kv_cache(models):
    compressed, _ = models
    seen = []
    hook = compressed.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            compressed.generate(**_prompts(), max_new_tokens=4, do_sample=False, eos_token_id=None)
    finally:
        hook.remove()
    assert seen == [6, 1, 1, 1], "after the prompt, each step feeds only the new token (cached keys/values)"


def test_a_reloaded_checkpoint_generates_the_same(models, tmp_path):
    compressed, _ = models
    compressed.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is lt.LightTokenForCausalLM
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "eos_token_id": None}
    with torch.no_grad():
        got = loaded.generate(**_prompts(), **kwargs)
        assert torch.equal(got, compressed.generate(**_prompts(), **kwargs))
