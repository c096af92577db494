"""compress() works for every task head of several backbones, and LM heads compute logits from the codes."""

from __future__ import annotations

import glob

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    DebertaV2Config,
    GPT2Config,
    MPNetConfig,
    RobertaConfig,
)

import lighttoken_hf as lt

VOCAB, DIM, BATCH, SEQ, CHOICES = 150, 32, 2, 8, 3
SMALL = {"hidden_size": DIM, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
CONFIGS = {
    "bert": lambda: BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **SMALL),
    "roberta": lambda: RobertaConfig(vocab_size=VOCAB, max_position_embeddings=64, **SMALL),
    "deberta-v2": lambda: DebertaV2Config(vocab_size=VOCAB, max_position_embeddings=64, **SMALL),
    "mpnet": lambda: MPNetConfig(vocab_size=VOCAB, max_position_embeddings=64, **SMALL),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB,
        n_embd=DIM,
        n_layer=1,
        n_head=2,
        n_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
}
HEADS = {
    "base": AutoModel,
    "seq-cls": AutoModelForSequenceClassification,
    "token-cls": AutoModelForTokenClassification,
    "qa": AutoModelForQuestionAnswering,
    "multiple-choice": AutoModelForMultipleChoice,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
}
LM_HEADS = ("masked-lm", "causal-lm")


pytestmark = pytest.mark.usefixtures("single_thread")


def _config(name: str, head: str):
    config = CONFIGS[name]()
    if head == "causal-lm":
        config.is_decoder = True
    return config


def _inputs(head: str, with_labels: bool) -> dict:
    g = torch.Generator().manual_seed(3)
    shape = (BATCH, CHOICES, SEQ) if head == "multiple-choice" else (BATCH, SEQ)
    ids = torch.randint(3, VOCAB, shape, generator=g)
    mask = torch.ones_like(ids)
    mask[..., -2:] = 0  # padded tail
    out = {"input_ids": ids, "attention_mask": mask}
    if not with_labels:
        return out
    if head in ("seq-cls", "multiple-choice"):
        out["labels"] = torch.tensor([0, 1])
    elif head == "token-cls":
        out["labels"] = torch.randint(0, 2, shape, generator=g)
    elif head == "qa":
        out["start_positions"], out["end_positions"] = torch.tensor([1, 2]), torch.tensor([3, 5])
    elif head in LM_HEADS:
        out["labels"] = ids.masked_fill(mask == 0, -100)
    return out


def _loss(out, head: str) -> torch.Tensor:
    return out.last_hidden_state.pow(2).mean() if head == "base" else out.loss


def _tensors(out) -> dict:
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _saved_tensors(path) -> dict:
    tensors = {}
    for file in glob.glob(f"{path}/*.safetensors"):
        tensors.update(load_file(file))
    return tensors


def _grad_groups(model, skip: set[int]) -> list[list[str]]:
    """Names (aliases grouped) of the parameters that received a gradient, except the ids in ``skip``."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in skip and param.grad is not None:
            groups.setdefault(id(param), []).append(name)
    return list(groups.values())


CASES = [
    pytest.param(name, head, id=f"{name}-{head}")
    for name in CONFIGS
    for head in HEADS
    if type(CONFIGS[name]()) in HEADS[head]._model_mapping
]


@pytest.mark.parametrize(("name", "head"), CASES)
def test_compressed_head(name, head, tmp_path):
    auto_cls = HEADS[head]
    torch.manual_seed(0)
    original = auto_cls.from_config(_config(name, head))
    model = lt.compress(original, ratio=4, schedule={"max_epochs": 1}, progress=False)
    assert type(model) is dict(lt.core.modeling_lighttoken.LIGHTTOKEN_CLASSES)[auto_cls]

    # forward + backward in train mode: the backbone's own output type, a finite loss, gradients
    batch = _inputs(head, with_labels=True)
    out, ref = model(**batch), original(**batch)
    assert type(out) is type(ref)
    loss = _loss(out, head)
    assert torch.isfinite(loss)
    loss.backward()
    _loss(ref, head).backward()
    embedding = model.get_input_embeddings()
    got = {n for group in _grad_groups(model, {id(p) for p in embedding.parameters()}) for n in group}
    dense_embedding = original.get_input_embeddings().weight
    for group in _grad_groups(original, {id(dense_embedding)}):
        assert any(f"backbone.{n}" in got for n in group), f"no gradient reaches {group}"
    assert embedding.decoder_0_scale.grad is not None  # int8 decoders: the per-bit scales train

    # exact round trip through save_pretrained / AutoModelFor<Head>.from_pretrained
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = auto_cls.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)
    # from_pretrained leaves CPU tensors at unaligned addresses inside the safetensors mmap (plain
    # transformers models too), and some BLAS kernels then round differently (1 ulp, e.g. RoBERTa's
    # 32 -> 1 multiple-choice classifier): re-home them so the comparison below can be exact.
    for tensor in [*loaded.parameters(), *loaded.buffers()]:
        tensor.data = tensor.data.clone()
    plain = _inputs(head, with_labels=False)
    with torch.no_grad():
        expected, actual = _tensors(model(**plain)), _tensors(loaded(**plain))
    assert expected.keys() == actual.keys() and expected
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    # the checkpoint holds no dense V x d matrix
    assert not [k for k, v in _saved_tensors(tmp_path).items() if tuple(v.shape) == (VOCAB, DIM)]

    if head in LM_HEADS:
        _check_lm_logits(loaded, plain)


def _check_lm_logits(model, batch) -> None:
    """Logits are ``hidden @ W_hat^T (+ bias)`` with W_hat the decoded input embedding, never a dense copy."""
    assert model.config.compressed_lm_head
    head = model.backbone.get_output_embeddings()
    assert isinstance(head, lt.LightTokenLMHead)
    captured = {}
    hook = head.register_forward_hook(lambda module, args, output: captured.update(hidden=args[0]))
    with torch.no_grad():
        logits = model(**batch).logits
        hook.remove()
        dense = captured["hidden"] @ model.get_input_embeddings().weight.T
        if head.bias is not None:
            dense = dense + head.bias
    torch.testing.assert_close(logits, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_lm_head_with_low_rank_padding_and_frequency_tiers(name):
    """Every part of the factorised logits: SVD factors, partial (frequency-tier) stages, exact padding row."""
    head = "masked-lm" if name == "bert" else "causal-lm"
    torch.manual_seed(0)
    config = _config(name, head)
    config.vocab_size = 1024  # frequency tiers need >= 256 rows
    original = HEADS[head].from_config(config).eval()
    freqs = 1.0 / torch.arange(1, config.vocab_size + 1, dtype=torch.float64)
    model = lt.compress(
        original, ratio=4, svd_rank=4, token_frequencies=freqs, schedule={"max_epochs": 1}, progress=False
    ).eval()
    embedding = model.get_input_embeddings()
    assert embedding.svd_rank == 4 and embedding.row_index == "coverage"
    assert min(embedding.stage_rows) < embedding.num_embeddings  # a frequency tier (coverage mask)
    _check_lm_logits(model, _inputs(head, with_labels=False))
    head_module = model.backbone.get_output_embeddings()
    head_module.block_rows = 100  # blocks that straddle coverage bytes and the padding row
    _check_lm_logits(model, _inputs(head, with_labels=False))


def test_untied_output_layer_is_compressed_on_its_own(tmp_path):
    torch.manual_seed(0)
    config = CONFIGS["gpt2"]()
    config.tie_word_embeddings = False
    original = AutoModelForCausalLM.from_config(config).eval()
    model = lt.compress(original, ratio=4, schedule={"max_epochs": 1}, progress=False).eval()
    assert model.config.compressed_lm_head is False and model.config.output_embedding
    head = model.backbone.get_output_embeddings()
    assert isinstance(head, lt.LightTokenLMHead) and not head.tied
    assert head.embedding is not model.get_input_embeddings()
    report = model.compression_report
    dense = 2 * original.lm_head.weight.numel() * 4
    assert report.ratio == pytest.approx(dense / (report.compressed_nbytes + report.output_compressed_nbytes))
    assert report.ratio >= 4 and report.output_layer.startswith("untied: compressed on its own")
    batch = _inputs("causal-lm", with_labels=False)
    with torch.no_grad():  # the logits are those of the decoded output matrix
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
        want = hidden @ head.embedding.weight.T + (head.bias if head.bias is not None else 0)
        assert torch.allclose(model(**batch).logits, want, atol=1e-4)
    model.save_pretrained(tmp_path / "compressed")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "compressed").eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_untied_output_layer_stays_dense_on_request(tmp_path):
    torch.manual_seed(0)
    config = CONFIGS["gpt2"]()
    config.tie_word_embeddings = False
    original = AutoModelForCausalLM.from_config(config).eval()
    model = lt.compress(original, ratio=4, schedule={"max_epochs": 1}, progress=False, output_layer="dense").eval()
    assert model.config.compressed_lm_head is False and not model.config.output_embedding
    assert torch.equal(model.backbone.lm_head.weight, original.lm_head.weight)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not loaded.config.compressed_lm_head
    batch = _inputs("causal-lm", with_labels=False)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
