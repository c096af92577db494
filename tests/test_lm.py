"""Decoder LMs: a faithful embedding swap on every supported family (Gemma's scale included), the tied LM head's
logits and memory, the LM report, GGUF input, remote-code generation without the package."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import IdTokenizer, id_texts
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
)

import lighttoken_hf as lt
from lighttoken_hf.compressor.lm_metrics import lm_fidelity, perplexity
from lighttoken_hf.compressor.report import model_parts_nbytes
from lighttoken_hf.compressor.settings import OUTPUT_BIAS_MAX_SHARE, SENSITIVITY_SHRINKAGE
from lighttoken_hf.compressor.surgery import embedding_scale
from lighttoken_hf.gguf import load_gguf

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = {"schedule": {"max_epochs": 1}, "joint_iterations": 1, "progress": False}


def _gemma(vocab: int = 300) -> torch.nn.Module:
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=16,
        pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def _llama(vocab: int = 300, tied: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        pad_token_id=0,
        initializer_range=0.2,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def _logit_bias(head: torch.nn.Module) -> torch.Tensor | float:
    """The logit bias a compressed tied head adds (``output_bias``), 0 where it has none."""
    bias = getattr(head, "logit_bias", None)
    return 0.0 if bias is None else bias.float()


def test_a_scaled_embedding_keeps_its_scale_in_input_and_output(tmp_path):
    model = _gemma()
    embedding = model.get_input_embeddings()
    assert type(embedding).__name__ == "Gemma3TextScaledWordEmbedding"
    assert embedding_scale(embedding) == pytest.approx(math.sqrt(32), rel=1e-3)
    tok = IdTokenizer(300)
    compressed = lt.compress(model, ratio=4, tokenizer=tok, calibration_texts=id_texts(300), **FAST)
    assert compressed.config.embedding_scale == pytest.approx(math.sqrt(32), rel=1e-3)
    module = compressed.get_input_embeddings()
    ids = torch.arange(300)
    with torch.no_grad():
        assert torch.allclose(module(ids), module.weight * compressed.config.embedding_scale, atol=1e-5)
        # the tied output layer reads the unscaled matrix, as Gemma's own tied lm_head does
        hidden = torch.randn(2, 3, 32)
        head = compressed.get_output_embeddings()
        assert torch.allclose(head(hidden), hidden @ module.weight.T + _logit_bias(head), atol=1e-4)
    compressed.save_pretrained(tmp_path / "ckpt")
    reloaded = type(compressed).from_pretrained(tmp_path / "ckpt").eval()
    batch = {"input_ids": torch.tensor([[5, 17, 42, 99]])}
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, compressed(**batch).logits, atol=1e-5)
    # the LM report of a scaled model: close to the original at 4x, not broken
    report = lm_fidelity(model, compressed, tok, id_texts(300, seed=1), prompt=None)
    assert report["perplexity_increase"] < 0.5


def test_an_embedding_doing_more_than_a_constant_scale_is_refused():
    class Shifted(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) + 1.0

    model = _llama()
    model.set_input_embeddings(Shifted(300, 32))
    with pytest.raises(ValueError, match="more than multiply"):
        embedding_scale(model.get_input_embeddings())


def test_lm_report_fields_and_identity():
    model = _llama()
    tok = IdTokenizer(300)
    same = lm_fidelity(model, model, tok, id_texts(300), prompt="5 6 7", sample_tokens=4)
    assert same["next_token_kl"] == pytest.approx(0.0, abs=1e-6)
    assert same["top1_agreement"] == 1.0 and same["perplexity_increase"] == pytest.approx(0.0, abs=1e-9)
    assert same["sample_original"] == same["sample_compressed"]
    assert same["perplexity_original"] == pytest.approx(perplexity(model, tok, id_texts(300)), rel=1e-6)
    compressed = lt.compress(model, ratio=8, tokenizer=tok, calibration_texts=id_texts(300), **FAST)
    report = lm_fidelity(model, compressed, tok, id_texts(300, seed=3), prompt="5 6 7", sample_tokens=4)
    for key in (
        "perplexity_original",
        "perplexity_compressed",
        "perplexity_increase",
        "next_token_kl",
        "top1_agreement",
        "sample_original",
        "sample_compressed",
    ):
        assert key in report
    assert report["next_token_kl"] > 0 and 0 <= report["top1_agreement"] <= 1
    with pytest.raises(ValueError, match="causal or two masked"):
        lm_fidelity(model, lt.compress(torch.randn(50, 8), ratio=2, progress=False), tok, ["1 2 3"])


def test_the_cached_reference_holds_at_most_its_budget_and_gives_the_same_figures():
    """The original's predictions are kept for a prefix of batches within the budget; the rest are predicted
    again on each call, with the same figures as without a cache."""
    model, tok = _llama(), IdTokenizer(300)
    compressed = lt.compress(model, ratio=8, tokenizer=tok, calibration_texts=id_texts(300), **FAST)
    texts = id_texts(300, seed=3)
    plain = lm_fidelity(model, compressed, tok, texts, prompt=None, batch_size=2)
    for budget, cached in ((0, 0), (None, None)):
        reference: list = []
        first = lm_fidelity(model, compressed, tok, texts, prompt=None, batch_size=2, reference=reference,
                            reference_budget_bytes=budget)  # fmt: skip
        assert first == plain
        if cached is not None:
            assert reference == []
        again = lm_fidelity(model, compressed, tok, texts, prompt=None, batch_size=2, reference=reference,
                            reference_budget_bytes=budget)  # fmt: skip
        for key in ("perplexity_original", "perplexity_compressed", "next_token_kl"):
            assert again[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-4)  # fp16 cache rounding
        # fp16 rounding can flip a near-tie between the original's two most likely tokens
        assert again["top1_agreement"] == pytest.approx(plain["top1_agreement"], abs=2 / plain["predicted_tokens"])
    one_batch = reference[0][0].numel() * 2
    partial: list = []
    lm_fidelity(model, compressed, tok, texts, prompt=None, batch_size=2, reference=partial,
                reference_budget_bytes=one_batch)  # fmt: skip
    assert len(partial) == 1 < len(reference)


def test_a_causal_lm_reports_end_to_end_once_and_its_card_names_the_causal_auto_class():
    from lighttoken_hf.cards import card_facts

    model, tok = _llama(), IdTokenizer(300)
    compressed = lt.compress(
        model, ratio=8, tokenizer=tok, calibration_texts=id_texts(300), evaluation_texts=id_texts(300, seed=3), **FAST
    )
    report = compressed.compression_report
    expected = lm_fidelity(model, compressed, tok, id_texts(300, seed=3))
    assert report.end_to_end["perplexity_compressed"] == pytest.approx(expected["perplexity_compressed"], rel=1e-6)
    assert compressed.config.compression_stats["end_to_end"]["next_token_kl"] == pytest.approx(
        expected["next_token_kl"], rel=1e-6
    )
    facts = card_facts(compressed)
    assert (facts["auto_class"], facts["pipeline_tag"]) == ("AutoModelForCausalLM", "text-generation")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="tokens but the embedding matrix has only"):
        lt.compress(_llama(), ratio=4, tokenizer=IdTokenizer(400), **FAST)


def test_head_memory_stays_below_the_dense_matrix():
    """Logits of a 200k-token head in a fresh process: the peak memory growth stays below the dense matrix."""
    script = textwrap.dedent(
        """
        import torch
        from lighttoken_hf.compressor.resources import PeakResidentMemory
        from lighttoken_hf.core.lighttoken_codec import LightTokenEmbedding, pack_bits
        from lighttoken_hf.core.modeling_lighttoken import LightTokenLMHead
        torch.manual_seed(0)
        emb = LightTokenEmbedding(200_000, 64, svd_rank=8, stage_bits=[32, 32], stage_rows=[200_000, 50_000])
        for name, buf in emb.named_buffers():
            if name.startswith("codes_"):
                buf.random_(0, 256)
        covered = torch.zeros(1, 200_000, dtype=torch.bool)
        covered[0, :50_000] = True
        emb.coverage_1.copy_(pack_bits(covered)[0])
        head = LightTokenLMHead(emb)
        hidden = torch.randn(1, 1, 64)
        with torch.no_grad():
            head(hidden)  # warm-up: allocator and kernels
            with PeakResidentMemory() as memory:  # not ru_maxrss: it starts at the parent's peak
                logits = head(hidden)
        assert logits.shape == (1, 1, 200_000)
        print(memory.growth)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    growth = int(out.stdout.split()[-1])
    dense = 200_000 * 64 * 4
    assert growth < dense / 2, f"peak growth {growth} bytes vs dense {dense}"  # blocks + allocator noise


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_gguf(bad)
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "missing.gguf")


def _write_gguf(path, architecture: str, rows: int, dim: int):
    """A minimal GGUF file: the architecture, one block and a zero token-embedding tensor."""
    gguf = pytest.importorskip("gguf", reason="needs `pip install gguf`")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(rows, dim).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file_that_is_not_a_causal_lm_is_refused(tmp_path):
    path = _write_gguf(tmp_path / "encoder.gguf", "bert", rows=8, dim=4)
    with pytest.raises(ValueError, match="'bert'"):
        load_gguf(path)


def test_a_gpt2_style_untied_model_keeps_its_dense_output_layer_on_request():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=150, n_embd=32, n_layer=1, n_head=2, n_positions=32, tie_word_embeddings=False
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    compressed = lt.compress(
        model, ratio=4, tokenizer=IdTokenizer(150), calibration_texts=id_texts(150), output_layer="dense", **FAST
    )
    assert isinstance(compressed.get_output_embeddings(), torch.nn.Linear)
    assert compressed.compression_report.output_layer.startswith("untied: kept dense")
    assert "output layer" in compressed.compression_report.summary()


def _family_configs(vocab: int) -> dict:
    from transformers import Gemma2Config, GemmaConfig, PhiConfig, Qwen2Config

    common = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    return {
        "llama": LlamaConfig(**common, num_key_value_heads=1),
        "qwen2": Qwen2Config(**common, num_key_value_heads=1, tie_word_embeddings=True),
        "gemma": GemmaConfig(**common, num_key_value_heads=1, head_dim=16),
        "gemma2": Gemma2Config(**common, num_key_value_heads=1, head_dim=16, sliding_window=16),
        "gemma3": Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=16, sliding_window=16),
        "phi": PhiConfig(**common),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=2, n_positions=64),
        "bert": BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        ),
    }


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gemma2", "gemma3", "phi", "gpt2", "bert"])
def test_the_swap_equals_the_original_with_the_decoded_matrix(family):
    """The compressed model gives the outputs of the original whose embedding weight is the decoded matrix:
    everything the embedding module did beyond the lookup (Gemma's scale) is kept, nothing is added."""
    import copy

    vocab = 300
    config = _family_configs(vocab)[family]
    torch.manual_seed(0)
    model = (BertModel(config) if family == "bert" else AutoModelForCausalLM.from_config(config)).eval()
    tok = IdTokenizer(vocab)
    compressed = lt.compress(model, ratio=4, tokenizer=tok, calibration_texts=id_texts(vocab), **FAST).eval()
    reference = copy.deepcopy(model)
    head = compressed.get_output_embeddings()
    with torch.no_grad():
        decoded = compressed.get_input_embeddings().weight.float()
        reference.get_input_embeddings().weight.copy_(decoded)  # a tied output layer shares this weight
        if isinstance(head, lt.LightTokenLMHead) and not head.tied:  # an untied one has its own matrix
            reference.get_output_embeddings().weight.copy_(head.embedding.weight.float())
    batch = {"input_ids": torch.tensor([[5, 17, 42, 99, 7, 250]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    with torch.no_grad():
        want, got = reference(**batch), compressed(**batch)
    key = "last_hidden_state" if family == "bert" else "logits"
    if key == "logits":  # plus the tied head's logit bias, the one stored part beside the matrix
        want[key] = want[key] + _logit_bias(head)
    assert torch.allclose(got[key], want[key], atol=1e-4, rtol=1e-4), (got[key] - want[key]).abs().max()
    tied = getattr(model.get_output_embeddings(), "weight", None) is model.get_input_embeddings().weight
    assert isinstance(head, lt.LightTokenLMHead) == (family != "bert")  # tied or compressed on its own
    assert (compressed.compression_report.output_layer or "").startswith("tied") == (tied and family != "bert")


def test_remote_code_load_and_generate_without_the_package(tmp_path):
    model = _llama()
    compressed = lt.compress(model, ratio=4, tokenizer=IdTokenizer(300), calibration_texts=id_texts(300), **FAST)
    compressed.save_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        expected = compressed.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, do_sample=False)
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "lighttoken_hf":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        with torch.no_grad():
            out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=5, do_sample=False)
        print(json.dumps({"class": type(model).__name__, "ids": out[0].tolist()}))
        """
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert result["class"] == "LightTokenForCausalLM"
    assert result["ids"] == expected[0].tolist()


def test_a_truncated_gguf_file_is_a_clear_error(tmp_path):
    path = _write_gguf(tmp_path / "cut.gguf", "llama", rows=64, dim=16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="cut.gguf"):
        load_gguf(path)


def test_a_model_without_token_embeddings_is_refused():
    class NoEmbedding(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="PreTrainedModel or a 2-D tensor"):
        lt.compress(NoEmbedding(), ratio=4, progress=False)


def test_short_model_names_resolve_to_the_bundled_files():
    from lighttoken_hf.cli import SHORT_NAMES, _resolve_model
    from lighttoken_hf.pretrained import smollm2_gguf_path

    assert set(SHORT_NAMES) == {"smollm2", "gemma3"}
    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert _resolve_model("smollm2") == (str(path), path)


def test_a_materialized_head_gives_the_same_logits():
    model = _llama(tied=True)
    compressed = lt.compress(model, ratio=4, tokenizer=IdTokenizer(300), calibration_texts=id_texts(300), **FAST)
    batch = {"input_ids": torch.tensor([[5, 17, 42, 99]])}
    with torch.no_grad():
        blockwise = compressed(**batch).logits
        compressed.get_input_embeddings().materialize()
        dense = compressed(**batch).logits
        compressed.get_input_embeddings().materialize(False)
    assert torch.allclose(blockwise, dense, atol=1e-4)


@pytest.mark.parametrize("positions", [1, 3, 40])
def test_table_and_block_scoring_give_the_decoded_matrix_logits(positions):
    """A few positions (generation) are scored through code-byte tables, many in row blocks; both equal the
    logits of the decoded matrix, with frequency tiers and an exact padding row."""
    model = _llama(vocab=1024, tied=True)  # frequency tiers need >= 256 rows per tier
    freqs = 1.0 / torch.arange(1, 1025, dtype=torch.float64)
    compressed = lt.compress(
        model, ratio=4, svd_rank=4, tokenizer=IdTokenizer(1024), token_frequencies=freqs,
        calibration_texts=id_texts(1024), **FAST,
    )  # fmt: skip
    head = compressed.get_output_embeddings()
    emb = compressed.get_input_embeddings()
    assert min(emb.stage_rows) < emb.num_embeddings  # a frequency tier
    hidden = torch.randn(1, positions, 32)
    with torch.no_grad():
        want = hidden @ emb.weight.T + _logit_bias(head)
        head.lut_positions = 10**9
        table = head(hidden)
        head.lut_positions = 0
        blocks = head(hidden)
    assert torch.allclose(table, want, atol=1e-4) and torch.allclose(blocks, want, atol=1e-4)


def _tiny_llama(vocab: int = 40, tied: bool = True) -> torch.nn.Module:
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=tied, pad_token_id=0, initializer_range=0.3,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def _brute_force_fisher_traces(model: torch.nn.Module, texts: list[str], tok) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the exact traces of the output-side and the input-side Fisher information of the
    next-token distributions, every next token ``y`` at every position enumerated (one backward pass each)."""
    vocab = model.config.vocab_size
    out_trace = torch.zeros(vocab, dtype=torch.float64)
    in_trace = torch.zeros(vocab, dtype=torch.float64)
    weight = model.get_input_embeddings().weight
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        for pos in range(ids.shape[1]):
            for y in range(vocab):
                inputs = torch.nn.functional.embedding(ids, weight.detach()).requires_grad_(True)
                head = weight.detach().clone().requires_grad_(True)  # the output layer's own copy
                hidden = model.model(inputs_embeds=inputs).last_hidden_state
                logp = torch.log_softmax(hidden[0, pos] @ head.T, dim=-1)
                g_in, g_out = torch.autograd.grad(logp[y], (inputs, head))
                p = float(logp[y].detach().exp())
                out_trace += p * (g_out.double() ** 2).sum(1)
                # the prediction at ``pos`` depends on the input rows at every position up to it
                in_trace.index_add_(0, ids[0], p * (g_in[0].double() ** 2).sum(1))
    return out_trace, in_trace


def test_lm_metric_equals_a_brute_force_fisher_information():
    from lighttoken_hf.compressor.lm_sensitivity import lm_sensitivity

    model, tok = _tiny_llama(), IdTokenizer(40)
    texts = ["5 17 9 33 21", "8 8 30 12 39"]
    out_exact, in_exact = _brute_force_fisher_traces(model, texts, tok)
    # output side, deterministic: the tied metric's row weights minus the untied one's (same sampled y)
    kwargs = dict(batch_size=2, progress=False, seed=0)
    _, tied, _ = lm_sensitivity(model, tok, texts, **kwargs)
    _, untied, _ = lm_sensitivity(model, tok, texts, tied_output=False, **kwargs)
    assert torch.allclose(tied - untied, out_exact, rtol=1e-4, atol=1e-9)
    # input side: one sampled y per position, unbiased; its mean over many seeds approaches the exact trace
    runs = [lm_sensitivity(model, tok, texts, tied_output=False, batch_size=2, progress=False, seed=s)[1]
            for s in range(300)]  # fmt: skip
    mean = torch.stack(runs).mean(0)
    seen = in_exact > 0
    assert torch.equal(mean > 0, seen)  # only the rows the texts contain (no frequencies given)
    assert float(mean[seen].sum()) == pytest.approx(float(in_exact[seen].sum()), rel=0.1)
    assert torch.corrcoef(torch.stack([mean[seen], in_exact[seen]]))[0, 1] > 0.9


def test_lm_metric_is_the_default_for_causal_lms_only():
    model = _llama()
    tok = IdTokenizer(300)
    auto = lt.compress(model, ratio=8, tokenizer=tok, calibration_texts=id_texts(300), **FAST)
    info = auto.compression_report.sensitivity
    assert info["metric"] == "lm" and info["calibration"] == "given texts" and 0 < info["output_share"] < 1
    assert info["shrinkage"] == SENSITIVITY_SHRINKAGE["lm"]  # each metric's own default
    assert auto.compression_report.frequency_source.startswith("LM Fisher trace")
    plain = lt.compress(model, ratio=8, tokenizer=tok, calibration_texts=id_texts(300),
                        sensitivity_metric="hidden_states", **FAST)  # fmt: skip
    assert plain.compression_report.sensitivity.get("metric") is None
    assert plain.compression_report.sensitivity["shrinkage"] == SENSITIVITY_SHRINKAGE["hidden_states"]
    assert not plain.compression_report.frequency_source.startswith("LM")
    with pytest.raises(ValueError, match="needs a causal LM"):
        bert = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32))  # fmt: skip
        lt.compress(bert, ratio=4, tokenizer=IdTokenizer(100), sensitivity_metric="lm", **FAST)
    with pytest.raises(ValueError, match="sensitivity_metric must be one of"):
        lt.compress(model, ratio=8, tokenizer=tok, sensitivity_metric="fisher", **FAST)


def test_the_output_bias_cancels_each_rows_weighted_mean_logit_error(tmp_path):
    """The tied head's logit bias is ``c_v = -mu_v . delta_v`` (``mu_v`` the ``p_v (1 - p_v)``-weighted mean
    final hidden state on the calibration text, computed here by brute force position by position), so each
    row's logit error, weighted so and averaged, is zero with it; its bytes are in the ratio and the token
    matrix's share; it survives a save and reload; ``output_bias=False`` leaves it out."""
    model, tok = _llama(), IdTokenizer(300)
    texts = id_texts(300)
    compressed = lt.compress(model, ratio=8, tokenizer=tok, calibration_texts=texts, output_bias=True, **FAST)
    head = compressed.eval().get_output_embeddings()
    assert compressed.config.output_bias and head.logit_bias.dtype == torch.float16
    original = model.get_input_embeddings().weight.detach().double()
    delta = compressed.get_input_embeddings().weight.detach().double() - original
    weighted_sum = torch.zeros(300, 32, dtype=torch.float64)
    mass = torch.zeros(300, dtype=torch.float64)
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            finals = model.model(input_ids=ids).last_hidden_state[0]  # what the output layer reads
            logits = model(input_ids=ids).logits[0]
            assert torch.allclose(finals @ model.lm_head.weight.T, logits, atol=1e-5)
            for h, z in zip(finals.double(), logits.double()):
                p = torch.softmax(z, -1)
                weighted_sum += (p * (1 - p)).unsqueeze(1) * h
                mass += p * (1 - p)
    want = -(weighted_sum * delta).sum(1) / mass  # the bias that zeroes the weighted mean logit error
    assert torch.allclose(head.logit_bias.double(), want, rtol=2e-3, atol=1e-5)  # fp16 storage
    assert float(want.abs().max()) > 1e-3
    from lighttoken_hf.compressor.lm_sensitivity import lm_sensitivity

    *_, means = lm_sensitivity(model, tok, texts, output_means=True, batch_size=4, progress=False)
    assert torch.allclose(means.double(), weighted_sum / mass.unsqueeze(1), rtol=1e-4, atol=1e-5)

    report = compressed.compression_report
    assert report.output_bias_nbytes == 300 * 2
    assert report.ratio == pytest.approx(report.dense_nbytes / (report.compressed_nbytes + 600)) and report.ratio >= 8
    plain = model_parts_nbytes(model)["token_matrix"]
    assert model_parts_nbytes(compressed)["token_matrix"] == pytest.approx(plain / report.ratio, rel=0.02)
    from lighttoken_hf.cards import card_facts

    facts = card_facts(compressed)
    assert facts["ratio"] == pytest.approx(report.ratio) and facts["target_ratio"] == pytest.approx(8, rel=1e-3)
    assert facts["compressed_nbytes"] == report.compressed_nbytes + 600
    assert any(label == "of which output logit bias" for label, _ in facts["sections"]["size"])
    compressed.save_pretrained(tmp_path / "ckpt")
    reloaded = lt.LightTokenForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(reloaded.get_output_embeddings().logit_bias, head.logit_bias)
    batch = {"input_ids": torch.tensor([[5, 17, 42, 99]])}
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, compressed(**batch).logits, atol=1e-5)

    without = lt.compress(model, ratio=8, tokenizer=tok, calibration_texts=texts, output_bias=False, **FAST)
    assert not without.config.output_bias and without.get_output_embeddings().logit_bias is None
    assert without.compression_report.output_bias_nbytes is None
    assert without.compression_report.compressed_nbytes > report.compressed_nbytes  # the bias's bytes go to codes
    # by default only where it is a small share of the budget: 2 bytes a row against 32 * 4 / ratio
    for ratio in (1.5, 8):
        auto = lt.compress(model, ratio=ratio, tokenizer=tok, calibration_texts=texts, **FAST)
        assert auto.config.output_bias == (2 * ratio / (32 * 4) <= OUTPUT_BIAS_MAX_SHARE)


def test_the_lm_defaults_are_what_the_dev_sweeps_chose():
    """The LM metric's shrinkage is the dev sweep's best and the output bias is on where the sweep measured it
    better (benchmarks/results/lm_sweep_smollm2_*.json, dev paragraphs; lm_benchmark.py reports held-out text)."""
    import json
    from pathlib import Path

    from lighttoken_hf.compressor.settings import CompressionSettings

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    shrinkage = json.loads((results / "lm_sweep_smollm2_25x_shrinkage.json").read_text())["records"]
    best = min(shrinkage, key=lambda r: r["perplexity_compressed"])
    assert SENSITIVITY_SHRINKAGE["lm"] == best["options"]["sensitivity_shrinkage"]
    bias = json.loads((results / "lm_sweep_smollm2_8x.json").read_text())["records"]
    on = next(r for r in bias if r["options"] == {})
    off = next(r for r in bias if r["options"] == {"output_bias": False})
    share_8x = 2 * 8 / (576 * 4)  # the bias's bytes over SmolLM2's budget at 8x
    assert CompressionSettings().output_bias is None  # by its share of the budget
    assert (share_8x <= OUTPUT_BIAS_MAX_SHARE) == (on["perplexity_compressed"] < off["perplexity_compressed"])
