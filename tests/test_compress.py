"""compress(): real ratio, fidelity report, determinism, input validation and the model round trip."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAST_SCHEDULE, make_planted_matrix
from safetensors.torch import load_file

import lighttoken_hf
from lighttoken_hf import LightTokenEmbedding, compress

FIDELITY_KEYS = {"rel_error", "mean_row_cosine", "min_row_cosine", "nn_overlap"}


def fast(matrix_or_model, ratio=8, **kw):
    kw.setdefault("schedule", FAST_SCHEDULE)
    return compress(matrix_or_model, ratio, progress=False, **kw)


def stored_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def rel_error(e: torch.Tensor, e_hat: torch.Tensor) -> float:
    return float((e - e_hat).norm() / e.norm())


@pytest.fixture(scope="module")
def compressed_planted():
    e = make_planted_matrix()
    return e, fast(e, 8)


# ------------------------------------------------------------------ bare matrices
def test_real_ratio_and_report(compressed_planted):
    e, m = compressed_planted
    assert isinstance(m, LightTokenEmbedding)
    assert (m.num_embeddings, m.embedding_dim) == tuple(e.shape)
    # the ratio counts every stored byte, independently of the module's own accounting
    assert e.numel() * 4 / stored_bytes(m) >= 8
    assert m.compression_ratio >= 8
    report = m.compression_report
    assert report.ratio >= 8
    assert report.compressed_nbytes == stored_bytes(m)
    assert report.dense_nbytes == e.numel() * 4
    assert set(report.fidelity) >= FIDELITY_KEYS
    assert all(math.isfinite(report.fidelity[k]) for k in FIDELITY_KEYS)
    assert isinstance(report.summary(), str) and "ratio" in report.summary()
    json.dumps(report.to_dict())  # the report is JSON-serialisable


def test_report_matches_the_returned_module(compressed_planted):
    e, m = compressed_planted
    w = m.weight.detach()
    fid = m.compression_report.fidelity
    assert fid["rel_error"] == pytest.approx(rel_error(e, w), rel=1e-4)
    cos = torch.nn.functional.cosine_similarity(e, w, dim=1)
    assert fid["mean_row_cosine"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert fid["min_row_cosine"] == pytest.approx(float(cos.min()), abs=1e-5)
    assert 0 <= fid["nn_overlap"] <= 1


def test_beats_svd_only_at_the_same_ratio(compressed_planted):
    e, m = compressed_planted
    svd = fast(e, 8, num_stages=0)
    assert svd.stage_bits == [] and svd.svd_rank >= 1
    assert e.numel() * 4 / stored_bytes(svd) >= 8
    lt_err, svd_err = rel_error(e, m.weight.detach()), rel_error(e, svd.weight.detach())
    assert lt_err < svd_err
    assert m.compression_report.fidelity["rel_error"] < svd.compression_report.fidelity["rel_error"]


def test_svd_only_equals_truncated_svd():
    # the SVD ablation is the best rank-k approximation (up to fp16 storage of the factors)
    e = make_planted_matrix(vocab=128, dim=16, rank=16)
    m = fast(e, 4, num_stages=0)
    k = m.svd_rank
    u, s, vh = torch.linalg.svd(e.double(), full_matrices=False)
    best = (u[:, :k] * s[:k]) @ vh[:k]
    assert rel_error(e, m.weight.detach()) == pytest.approx(rel_error(e, best.float()), rel=1e-2)


def test_same_seed_same_codes_different_seed_different_codes(compressed_planted):
    e, m = compressed_planted
    again = fast(e.clone(), 8)
    a, b = m.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    other = fast(e.clone(), 8, seed=1).state_dict()
    assert other.keys() == a.keys()
    codes = [k for k in a if k.startswith("codes_")]
    assert codes
    assert any(not torch.equal(a[k], other[k]) for k in codes)


def test_does_not_modify_the_input():
    e = make_planted_matrix(vocab=64, dim=8)
    before = e.clone()
    fast(e, 4)
    assert torch.equal(e, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_other_float_dtypes(dtype):
    e = make_planted_matrix(vocab=128, dim=16).to(dtype)
    m = fast(e, 4)
    assert m.compression_ratio >= 4
    assert m.compression_report.fidelity["mean_row_cosine"] > 0.5


def test_settings_object_is_the_primary_form(compressed_planted):
    from lighttoken_hf import CompressionSettings

    e, m = compressed_planted
    settings = CompressionSettings(ratio=8, schedule=FAST_SCHEDULE)
    by_object = compress(e.clone(), settings, progress=False)
    for key, value in m.state_dict().items():  # the same codes as the keyword form
        assert torch.equal(by_object.state_dict()[key], value), key
    assert by_object.compression_report.settings == settings.to_dict()
    # keywords override the object's fields (the object itself is left as it was)
    wider = compress(e.clone(), settings, ratio=12, progress=False)
    assert wider.compression_report.settings["ratio"] == 12 and settings.ratio == 8
    assert wider.compression_ratio >= 12
    with pytest.raises(TypeError, match="ratio twice"):
        compress(e, 8, ratio=9)
    with pytest.raises(TypeError, match="CompressionSettings or a ratio"):
        compress(e, "8")
    with pytest.raises(TypeError, match="unknown compress\\(\\) option"):
        compress(e, settings, epochs=3)
    with pytest.raises(ValueError, match="frequency_share"):
        settings.replace(frequency_share=2.0)  # checked like the constructor


def test_cli_defaults_are_the_settings_defaults():
    import dataclasses

    from lighttoken_hf.cli import build_parser
    from lighttoken_hf.compressor.settings import CompressionSettings

    args = build_parser().parse_args(["compress", "--out", "x"])
    defaults = CompressionSettings()
    assert (args.ratio, args.seed, args.device) == (defaults.ratio, defaults.seed, defaults.device)
    text = build_parser()._subparsers._group_actions[0].choices["compress"].format_help()
    for name in ("loss", "joint_iterations", "decoder_dtype", "output_layer"):
        assert f"default: {getattr(defaults, name)}" in " ".join(text.split()), name
    assert {f.name for f in dataclasses.fields(defaults)} >= {"ratio", "schedule"}


def test_budget_bytes_instead_of_ratio():
    e = make_planted_matrix(vocab=256, dim=16)
    m = compress(e, budget_bytes=3000, schedule=FAST_SCHEDULE, progress=False)
    assert stored_bytes(m) <= 3000


def test_frequency_aware_allocation_favours_frequent_tokens():
    # d = 64: the token-rank table (2 bytes a row) is a small share of the budget, as in real models
    # (3% for all-MiniLM-L6-v2 at 25x); at d = 16 it would be a quarter of it
    v, d = 2048, 64
    e = make_planted_matrix(vocab=v, dim=d, rank=12)
    zipf = 1.0 / torch.arange(1, v + 1, dtype=torch.float64)
    freqs = zipf[torch.randperm(v, generator=torch.Generator().manual_seed(0))]
    aware = fast(e, 8, token_frequencies=freqs)
    uniform = fast(e, 8, token_frequencies=freqs, frequency_aware=False)
    for m in (aware, uniform):
        assert e.numel() * 4 / stored_bytes(m) >= 8
    assert min(aware.stage_rows) < v  # some stage is spent on the frequent tokens only
    order = torch.argsort(freqs, descending=True)

    def row_err(m):
        return ((m.weight.detach() - e).norm(dim=1) / e.norm(dim=1)) ** 2

    err = row_err(aware)
    assert err[order[: v // 4]].mean() < err[order[v // 2 :]].mean()
    weighted = float((err * freqs).sum() / freqs.sum())
    assert weighted < float((row_err(uniform) * freqs).sum() / freqs.sum())


def test_token_frequencies_of_wrong_length_raise():
    e = make_planted_matrix(vocab=64, dim=8)
    with pytest.raises(ValueError, match="frequencies"):
        fast(e, 4, token_frequencies=torch.ones(63))


@pytest.mark.parametrize("loss", ["mse", "cosine", "cosine_bound"])
def test_other_losses_run(loss):
    e = make_planted_matrix(vocab=128, dim=16)
    m = fast(e, 4, loss=loss)
    assert m.compression_ratio >= 4
    # the joint refinement ran and the stored module decodes what the report measured
    assert m.compression_report.joint["iterations"] >= 1
    assert m.compression_report.fidelity["rel_error"] == pytest.approx(rel_error(e, m.weight.detach()), rel=1e-4)
    assert rel_error(e, m.weight.detach()) < 1.0


# ------------------------------------------------------------------ bad inputs
def _with(value, row=3, col=5):
    e = make_planted_matrix(vocab=32, dim=8)
    e[row, col] = value
    return e


@pytest.mark.parametrize(
    ("matrix", "error", "match"),
    [
        (_with(float("nan")), ValueError, "NaN"),
        (_with(float("inf")), ValueError, "Inf"),
        (_with(-float("inf")), ValueError, "Inf"),
        (torch.empty(0, 8), ValueError, "empty"),
        (torch.empty(8, 0), ValueError, "empty"),
        (torch.randn(32), ValueError, "2-D"),
        (torch.randn(4, 8, 8), ValueError, "2-D"),
        (torch.randint(0, 5, (32, 8)), TypeError, "floating"),
        (torch.ones(32, 8, dtype=torch.bool), TypeError, "floating"),
        ([[1.0, 2.0], [3.0, 4.0]], TypeError, "(?i)tensor"),
    ],
    ids=["nan", "inf", "-inf", "empty-rows", "empty-cols", "1d", "3d", "int", "bool", "list"],
)
def test_bad_matrices_raise_clear_errors(matrix, error, match):
    with pytest.raises(error, match=match):
        fast(matrix, 4)


def test_nan_error_says_where():
    with pytest.raises(ValueError, match="row 3"):
        fast(_with(float("nan")), 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stage_bits": 0}, ValueError, "stage_bits"),
        ({"stage_bits": -8}, ValueError, "stage_bits"),
        ({"num_stages": -1}, ValueError, "num_stages"),
        ({"svd_rank": -1}, ValueError, "svd_rank"),
        ({"svd_rank": 9}, ValueError, "svd_rank"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
        ({"schedule": {"epochs": 3}}, TypeError, "epochs"),
        ({"schedule": {"max_epochs": 0}}, ValueError, "max_epochs"),
        ({"loss": "l1"}, ValueError, "l1"),
        ({"angle_weight": 0.5}, ValueError, "angle_weight"),
        ({"factor_dtype": "float17"}, ValueError, "factor_dtype"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, error, match):
    e = make_planted_matrix(vocab=64, dim=8)
    with pytest.raises(error, match=match):
        fast(e, 4, **kwargs)


@pytest.mark.parametrize("ratio", [1, 0.5, 0, -2])
def test_ratio_at_most_one_raises(ratio):
    with pytest.raises(ValueError, match="ratio"):
        fast(make_planted_matrix(vocab=64, dim=8), ratio)


def test_unreachable_ratio_raises():
    with pytest.raises(ValueError, match="ratio"):
        fast(make_planted_matrix(vocab=64, dim=8), 60)


# ------------------------------------------------------------------ models
class NotAnEmbedding(torch.nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, dim))

    def forward(self, ids):
        return self.table[ids]


def test_model_without_nn_embedding_raises(tiny_bert):
    tiny_bert.set_input_embeddings(NotAnEmbedding(200, 32))
    with pytest.raises(ValueError, match="nn.Embedding"):
        fast(tiny_bert, 4)


def test_already_compressed_model_raises(tiny_bert):
    compressed = fast(tiny_bert, 4, frequency_aware=False)
    with pytest.raises(ValueError, match="already"):
        fast(compressed, 4)


def test_non_model_object_raises():
    with pytest.raises(TypeError):
        fast(object(), 4)


def _outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_tiny_bert_round_trip(tiny_bert, id_batch, tmp_path):
    from transformers import AutoModel

    reference = _outputs(tiny_bert, id_batch)
    dense_weight = tiny_bert.get_input_embeddings().weight.detach().clone()
    compressed = fast(tiny_bert, 4).eval()
    emb = compressed.get_input_embeddings()
    assert isinstance(emb, LightTokenEmbedding)
    assert (emb.num_embeddings, emb.embedding_dim) == (200, 32)
    assert emb.padding_idx == tiny_bert.config.pad_token_id
    assert emb.compression_ratio >= 4
    assert compressed.compression_report.ratio >= 4
    assert set(compressed.compression_report.fidelity) >= FIDELITY_KEYS
    # the original model is left alone (inplace=False)
    assert isinstance(tiny_bert.get_input_embeddings(), torch.nn.Embedding)
    assert torch.equal(tiny_bert.get_input_embeddings().weight, dense_weight)
    assert torch.equal(_outputs(tiny_bert, id_batch), reference)

    out = _outputs(compressed, id_batch)
    assert out.shape == reference.shape
    # A 4x compressed embedding (row cosines ~0.96) keeps the model close to the original: measured
    # per-token hidden-state cosines of about 0.98 (min) for this seed; the floor leaves a wide margin.
    cos = torch.nn.functional.cosine_similarity(out, reference, dim=-1)
    assert float(cos.min()) > 0.9

    compressed.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is type(compressed)
    assert isinstance(reloaded.get_input_embeddings(), LightTokenEmbedding)
    assert torch.equal(_outputs(reloaded, id_batch), out)
    assert torch.equal(reloaded.get_input_embeddings().weight, emb.weight)

    # the checkpoint holds only the compressed tensors for the word embeddings
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any(tuple(t.shape) == (200, 32) for t in saved.values())
    local = emb.state_dict()
    matched = {}
    for key, t in saved.items():
        for name, ref in local.items():
            if key.endswith("." + name) and t.shape == ref.shape and "word_embeddings" in key:
                matched[name] = t
    assert matched.keys() == local.keys()
    assert all(torch.equal(matched[n], local[n]) for n in local)
    assert sum(t.numel() * t.element_size() for t in matched.values()) == emb.compressed_nbytes
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "lighttoken"


def test_tiny_bert_classifier_round_trip(tiny_bert_config, id_batch, tmp_path):
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config).eval()
    compressed = fast(model, 4).eval()
    assert isinstance(compressed.get_input_embeddings(), LightTokenEmbedding)
    with torch.no_grad():
        logits = compressed(**id_batch).logits
    assert logits.shape == (3, tiny_bert_config.num_labels)
    compressed.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(reloaded) is type(compressed)
    with torch.no_grad():
        assert torch.equal(reloaded(**id_batch).logits, logits)


def test_bfloat16_model_round_trip(tiny_bert, id_batch, tmp_path):
    from transformers import AutoModel

    compressed = fast(tiny_bert.to(torch.bfloat16), 4).eval()
    emb = compressed.get_input_embeddings()
    assert emb.compression_ratio >= 4  # the codes and factors keep their own storage dtypes
    out = _outputs(compressed, id_batch)
    assert out.dtype == torch.bfloat16
    compressed.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert reloaded.get_input_embeddings().compressed_nbytes == emb.compressed_nbytes
    reloaded_out = _outputs(reloaded, id_batch)
    assert reloaded_out.dtype == torch.bfloat16
    assert torch.equal(reloaded_out, out)


def test_evaluation_texts_measure_end_to_end_once_in_the_report(tiny_bert, tiny_tokenizer):
    from lighttoken_hf.fidelity import builtin_sentences, sentence_embedding_cosine

    tokenizer = tiny_tokenizer
    texts = builtin_sentences()[:6]
    compressed = fast(tiny_bert, 4, tokenizer=tokenizer, evaluation_texts=texts)
    report = compressed.compression_report
    expected = sentence_embedding_cosine(tiny_bert, compressed, tokenizer, texts)
    assert report.end_to_end["sentence_embedding_cosine"] == pytest.approx(expected, abs=1e-6)
    assert report.end_to_end["sentences"] == 6
    assert compressed.config.compression_stats["end_to_end"] == report.end_to_end  # the one report
    with pytest.raises(ValueError, match="inplace=False"):
        fast(tiny_bert, 4, tokenizer=tokenizer, evaluation_texts=texts, inplace=True)
    with pytest.raises(ValueError, match="needs a model"):
        fast(torch.randn(64, 8), 4, evaluation_texts=texts)
    with pytest.raises(TypeError, match="list of strings"):
        fast(tiny_bert, 4, tokenizer=tokenizer, evaluation_texts="one text")


def test_inplace_swaps_the_embedding_of_the_given_model(tiny_bert):
    from lighttoken_hf.compressor.report import model_parts_nbytes

    before = model_parts_nbytes(tiny_bert)
    compressed = fast(tiny_bert, 4, inplace=True)
    assert compressed.backbone is tiny_bert
    assert isinstance(tiny_bert.get_input_embeddings(), LightTokenEmbedding)
    report = compressed.compression_report  # "before" is the model as it was given, not as it became
    assert report.model_parts_before == before and report.model_nbytes_before == sum(before.values())
    assert report.model_nbytes_before > report.model_nbytes_after


def test_checkpoint_loads_as_remote_code_without_the_package(tiny_bert, id_batch, tmp_path):
    # The saved folder ships its own code: a fresh interpreter that never imports lighttoken_hf loads
    # it with trust_remote_code=True and computes the same outputs.
    compressed = fast(tiny_bert, 4).eval()
    out = _outputs(compressed, id_batch)
    model_dir = tmp_path / "model"
    compressed.save_pretrained(model_dir)
    torch.save({"batch": id_batch, "out": out}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        assert "lighttoken_hf" not in sys.modules, "the package itself was imported"
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            out = model(**io["batch"]).last_hidden_state
        assert torch.equal(out, io["out"]), float((out - io["out"]).abs().max())
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]


def test_lighttoken_registered_with_auto_classes():
    from transformers import AutoConfig

    assert AutoConfig.for_model("lighttoken").__class__ is lighttoken_hf.LightTokenConfig


def test_shared_input_embeddings_are_a_clear_error():
    from transformers import T5Config, T5Model

    t5 = T5Model(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    with pytest.raises(ValueError, match="shares its input-embedding weight with encoder.embed_tokens"):
        fast(t5, 4, frequency_aware=False)


def test_report_gives_the_whole_model_size_and_how_to_read_it(tiny_bert):
    from lighttoken_hf.compressor.report import fmt_size

    # what a save writes: parameters and persistent buffers (not BERT's position_ids / token_type_ids)
    dense = sum(t.numel() * t.element_size() for t in tiny_bert.state_dict().values())
    assert dense < sum(p.numel() * p.element_size() for p in tiny_bert.parameters()) + sum(
        b.numel() * b.element_size() for b in tiny_bert.buffers()
    )
    model = compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)
    report = model.compression_report
    assert report.model_nbytes_before == dense
    embedding = tiny_bert.get_input_embeddings().weight
    saved = embedding.numel() * embedding.element_size() - report.compressed_nbytes
    assert report.model_nbytes_after == dense - saved
    summary = report.summary()
    assert f"{fmt_size(dense)} -> {fmt_size(dense - saved)}" in summary
    assert "how to read it" in summary and "end-to-end cosine is what matters" in summary
    assert model.config.compression_stats["model_nbytes_before"] == dense
    assert [fmt_size(n) for n in (1000, 2048, 44.7 * 2**20, 3 * 2**30)] == ["1,000 B", "2.0 KiB", "44.7 MiB", "3.0 GiB"]
