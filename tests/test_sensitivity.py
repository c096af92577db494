"""The model-sensitivity metric: its estimate, the whitening, and how compress() folds it into the format."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_SCHEDULE, make_planted_matrix

from lighttoken_hf import compress
from lighttoken_hf.compressor.frequencies import general_text_samples
from lighttoken_hf.compressor.sensitivity import embedding_sensitivity, whitening

TEXTS = ["the man said that the house was old.", "we can see the water from here!", "how many people came?"]


def metric_error(e: torch.Tensor, e_hat: torch.Tensor, metric: torch.Tensor) -> float:
    diff = (e - e_hat).double()
    return float(torch.einsum("id,de,ie->", diff, metric.double(), diff))


def test_sensitivity_is_a_normalised_psd_matrix(tiny_bert, tiny_tokenizer, single_thread):
    m = embedding_sensitivity(tiny_bert, tiny_tokenizer, TEXTS, probes=3, progress=False)
    d = tiny_bert.config.hidden_size
    assert m.shape == (d, d) and m.dtype == torch.float64
    assert torch.allclose(m, m.T)
    assert float(torch.linalg.eigvalsh(m).min()) > -1e-9
    assert m.diagonal().mean().item() == pytest.approx(1.0)
    # not the identity: a transformer is more sensitive along some directions than others
    eig = torch.linalg.eigvalsh(m)
    assert float(eig.max() / eig.mean()) > 1.5


def test_sensitivity_is_deterministic_and_leaves_the_model_alone(tiny_bert, tiny_tokenizer, single_thread):
    flags = [p.requires_grad for p in tiny_bert.parameters()]
    tiny_bert.train()
    a = embedding_sensitivity(tiny_bert, tiny_tokenizer, TEXTS, probes=2, seed=3, progress=False)
    b = embedding_sensitivity(tiny_bert, tiny_tokenizer, TEXTS, probes=2, seed=3, progress=False)
    assert torch.equal(a, b)
    assert tiny_bert.training  # mode restored
    assert [p.requires_grad for p in tiny_bert.parameters()] == flags
    assert all(p.grad is None for p in tiny_bert.parameters())
    assert tiny_bert.get_input_embeddings()._forward_hooks == {}


def test_sensitivity_rejects_bad_input(tiny_bert, tiny_tokenizer):
    with pytest.raises(ValueError, match="non-empty calibration text"):
        embedding_sensitivity(tiny_bert, tiny_tokenizer, ["", "  "], progress=False)
    with pytest.raises(ValueError, match="probes"):
        embedding_sensitivity(tiny_bert, tiny_tokenizer, TEXTS, probes=0, progress=False)
    with pytest.raises(ValueError, match="shrinkage"):
        whitening(torch.eye(4, dtype=torch.float64), 1.5)


def test_whitening_is_the_square_root_of_the_shrunk_metric(gen):
    x = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    m = x @ x.T + 0.1 * torch.eye(6, dtype=torch.float64)
    m = m / m.diagonal().mean()
    a, a_inv = whitening(m, 0.25)
    target = 0.75 * m + 0.25 * torch.eye(6, dtype=torch.float64)
    assert torch.allclose(a @ a, target, atol=1e-10)
    assert torch.allclose(a @ a_inv, torch.eye(6, dtype=torch.float64), atol=1e-10)


def test_general_text_samples_are_seeded_sentences():
    a = general_text_samples(8, seed=1)
    assert a == general_text_samples(8, seed=1) and a != general_text_samples(8, seed=2)
    assert len(a) == 8 and all(t[0].isupper() and t.endswith(".") and 6 <= len(t.split()) <= 25 for t in a)
    with pytest.raises(ValueError, match="num_texts"):
        general_text_samples(0)


def test_identity_metric_gives_the_plain_codes(planted_matrix):
    plain = compress(planted_matrix, 8, schedule=FAST_SCHEDULE, progress=False)
    eye = compress(
        planted_matrix, 8, schedule=FAST_SCHEDULE, progress=False, sensitivity=torch.eye(32, dtype=torch.float64)
    )
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, eye.state_dict()[name]), name
    assert eye.compression_report.sensitivity["calibration"] == "given matrix"
    assert plain.compression_report.sensitivity == {}


def test_metric_lowers_the_weighted_error_at_the_same_size(gen):
    e = make_planted_matrix(vocab=512, dim=32)
    # a strongly anisotropic metric: errors in the first 8 coordinates cost 20x more
    metric = torch.ones(32, dtype=torch.float64)
    metric[:8] = 20.0
    metric = torch.diag(metric)
    options = {"schedule": FAST_SCHEDULE, "progress": False}
    plain = compress(e, 8, **options)
    weighted = compress(e, 8, sensitivity=metric, sensitivity_shrinkage=0.0, **options)
    assert weighted.compressed_nbytes == plain.compressed_nbytes  # the metric costs no stored byte
    with torch.no_grad():
        plain_err = metric_error(e, plain.weight, metric)
        weighted_err = metric_error(e, weighted.weight, metric)
        assert weighted_err < 0.9 * plain_err
        # the stored module decodes exactly what compress() reports
        assert weighted.compression_report.fidelity["rel_error"] == pytest.approx(
            float((e - weighted.weight).norm() / e.norm()), rel=1e-4
        )


def test_metric_bad_input(planted_matrix):
    with pytest.raises(ValueError, match="32 x 32"):
        compress(planted_matrix, 8, sensitivity=torch.eye(16), progress=False)
    bad = torch.eye(32)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compress(planted_matrix, 8, sensitivity=bad, progress=False)
    with pytest.raises(ValueError, match="sensitivity_shrinkage"):
        compress(planted_matrix, 8, sensitivity_shrinkage=-0.1, progress=False)


def test_compress_model_measures_the_metric(tiny_bert, tiny_tokenizer, single_thread):
    model = compress(
        tiny_bert, 4, tokenizer=tiny_tokenizer, calibration_texts=TEXTS, schedule=FAST_SCHEDULE, progress=False
    )
    info = model.compression_report.sensitivity
    assert info["calibration"] == "given texts" and info["calibration_texts"] == len(TEXTS)
    assert info["shrinkage"] == 0.25 and info["seconds"] >= 0
    assert "sensitivity metric         on (given texts" in model.compression_report.summary()
    off = compress(tiny_bert, 4, tokenizer=tiny_tokenizer, sensitivity_weighted=False, progress=False,
                   schedule=FAST_SCHEDULE)  # fmt: skip
    assert off.compression_report.sensitivity == {}
    assert "sensitivity metric         off" in off.compression_report.summary()
