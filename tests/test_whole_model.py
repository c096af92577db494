"""Whole-model compression: the token matrix by LightToken and the backbone's Linear weights by torchao
weight-only int8 (through transformers' TorchAoConfig) or compressed-tensors' int4 pack-quantized format:
sizes by part equal to the files', a reload without the package, LoRA, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAST_SCHEDULE
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import tiny_bert_config

import lighttoken_hf as lt

pytest.importorskip("torchao", reason="whole-model compression needs torchao: pip install torchao")
pytest.importorskip("compressed_tensors", reason="int4 backbones need it: pip install compressed-tensors")


@pytest.fixture(scope="module")
def pair():
    """A tiny BERT compressed 8x with an fp32 backbone and with an int8 one (same seed, same codes)."""
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(vocab_size=3000, hidden_size=64, intermediate_size=128)).eval()
    settings = lt.CompressionSettings(ratio=8, schedule=FAST_SCHEDULE)
    dense_backbone = lt.compress(model, settings, progress=False).eval()
    int8 = lt.compress(model, settings, quantize_backbone="int8", progress=False).eval()
    return model, dense_backbone, int8


@pytest.fixture(scope="module")
def int4(pair):
    """The same tiny BERT, same codes, with an int4 backbone (compressed-tensors)."""
    model, _, _ = pair
    settings = lt.CompressionSettings(ratio=8, schedule=FAST_SCHEDULE)
    return lt.compress(model, settings, quantize_backbone="int4", progress=False).eval()


def _file_tensor_bytes(folder) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 - a safetensors file, not a dict
            tensor = f.get_tensor(key)
            total += tensor.numel() * tensor.element_size()
    return total


def test_int8_backbone_quantizes_every_linear_weight_and_counts_every_byte(pair):
    from lighttoken_hf.compressor.report import model_nbytes

    model, dense_backbone, int8 = pair
    linears = [m for m in int8.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m.weight).__name__ == "Int8Tensor" for m in linears)
    stored, plain_stored = (m.get_input_embeddings().state_dict() for m in (int8, dense_backbone))
    for name in ("codes_0", "decoder_0_qweight"):  # the compressed token matrix keeps its own format
        assert torch.equal(stored[name], plain_stored[name])
    report, plain = int8.compression_report, dense_backbone.compression_report
    assert sum(report.model_parts_after.values()) == report.model_nbytes_after == model_nbytes(int8)
    int8_weights = sum(m.weight.numel() for m in linears)  # one byte each, plus a scale per output row
    scales = 8 * sum(m.out_features for m in linears)  # a float32 scale (and zero point) per output row
    assert int8_weights <= report.model_parts_after["backbone"] <= int8_weights + scales
    assert report.model_parts_after["backbone"] < plain.model_parts_after["backbone"] / 3.5
    assert report.model_fp32_nbytes == 4 * sum(p.numel() for p in model.parameters())
    assert report.model_fp32_nbytes / report.model_nbytes_after > plain.model_fp32_nbytes / plain.model_nbytes_after
    assert "vs bf16" in report.summary() and "backbone" in report.summary()
    ids = torch.randint(0, 3000, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = int8(input_ids=ids).last_hidden_state, dense_backbone(input_ids=ids).last_hidden_state
    cosine = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min()
    assert cosine > 0.99  # int8 weights move the outputs a little, not the direction


def test_int4_backbone_packs_every_linear_weight_and_counts_every_byte(pair, int4, tmp_path):
    from lighttoken_hf.compressor.backbone import INT4_GROUP_SIZE
    from lighttoken_hf.compressor.report import model_nbytes

    _, dense_backbone, _ = pair
    int4.save_pretrained(tmp_path / "first")
    fresh = type(int4).from_pretrained(tmp_path / "first").eval()  # loads packed, whatever the fixture ran
    linears = [m for m in fresh.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight_packed.dtype == torch.int32 for m in linears)  # packed until a forward
    fresh.save_pretrained(tmp_path / "packed")  # a save of the packed model writes it as it is
    stored, plain_stored = (m.get_input_embeddings().state_dict() for m in (int4, dense_backbone))
    for name in ("codes_0", "decoder_0_qweight"):  # the compressed token matrix keeps its own format
        assert torch.equal(stored[name], plain_stored[name])
    report = int4.compression_report
    assert report.backbone_rounding == "nearest level (no tokenizer to calibrate with)"
    weights = sum(m.in_features * m.out_features for m in linears)
    # half a byte per weight, an fp16 scale per group, each weight's shape (2 int64)
    assert report.model_parts_after["backbone"] == weights // 2 + 2 * weights // INT4_GROUP_SIZE + 16 * len(linears)
    assert sum(report.model_parts_after.values()) == report.model_nbytes_after == model_nbytes(fresh)
    assert _file_tensor_bytes(tmp_path / "packed") == report.model_nbytes_after
    ids = torch.randint(0, 3000, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = fresh(input_ids=ids).last_hidden_state, dense_backbone(input_ids=ids).last_hidden_state
    cosine = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min()
    assert cosine > 0.98  # int4 weights move the outputs a little more than int8, not the direction
    # the forward unpacked the weights in memory; the save packs them again: the files hold what was reported
    assert not any(hasattr(m, "weight_packed") for m in fresh.modules())
    fresh.save_pretrained(tmp_path / "model")
    assert _file_tensor_bytes(tmp_path / "model") == report.model_nbytes_after
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).last_hidden_state, a)


def test_int8_file_bytes_equal_the_reported_bytes(pair, tmp_path):
    _, dense_backbone, int8 = pair
    for model, name in ((int8, "int8"), (dense_backbone, "dense")):
        model.save_pretrained(tmp_path / name)
        assert _file_tensor_bytes(tmp_path / name) == model.compression_report.model_nbytes_after, name


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_reloads_without_the_package_with_the_same_outputs(pair, int4, kind, tmp_path):
    quantized = pair[2] if kind == "int8" else int4
    quantized.save_pretrained(tmp_path / "model")
    ids = torch.randint(0, 3000, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = quantized(input_ids=ids).last_hidden_state
    check = (
        'type(model.backbone.encoder.layer[0].intermediate.dense.weight).__name__ == "Int8Tensor"' if kind == "int8"
        else 'model.backbone.encoder.layer[0].intermediate.dense.weight_packed.dtype == torch.int32'
    )  # fmt: skip
    save_file({"ids": ids, "out": expected.contiguous()}, str(tmp_path / "io.safetensors"))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["lighttoken_hf"] = None  # not importable: the remote code and transformers do the work
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert {check}
        io = load_file({str(tmp_path / "io.safetensors")!r})
        with torch.no_grad():
            out = model(input_ids=io["ids"]).last_hidden_state
        assert torch.equal(out, io["out"]), float((out - io["out"]).abs().max())
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_lora_trains_on_the_quantized_backbone(pair, int4, kind):
    from peft import LoraConfig, get_peft_model

    quantized = pair[2] if kind == "int8" else int4
    lora = get_peft_model(quantized, LoraConfig(target_modules=["query", "value"], r=4))
    trainable = [p for p in lora.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)
    ids = torch.randint(0, 3000, (4, 8), generator=torch.Generator().manual_seed(3))
    target = torch.randn(4, 8, 64, generator=torch.Generator().manual_seed(4))
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    losses = []
    for _ in range(6):
        loss = ((lora(input_ids=ids).last_hidden_state - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    lora.unload()  # leave the shared fixture's model without adapters


def test_bad_quantize_backbone_values_are_clear_errors():
    with pytest.raises(ValueError, match="quantize_backbone must be one of"):
        lt.CompressionSettings(quantize_backbone="int3")
    with pytest.raises(TypeError, match="quantize_backbone"):
        lt.CompressionSettings(quantize_backbone=8)


@pytest.mark.parametrize(("kind", "library"), [("int8", "torchao"), ("int4", "compressed_tensors")])
def test_a_missing_quantization_library_is_a_clear_error_before_any_work(kind, library, monkeypatch):
    import importlib.util

    from transformers import BertModel

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == library else real(name, *a))
    model = BertModel(tiny_bert_config(vocab_size=300, hidden_size=64, intermediate_size=128))
    with pytest.raises(ImportError, match=f"pip install 'lighttoken-hf\\[quantize\\]'.*{library.replace('_', '-')}"):
        lt.compress(model, 8, quantize_backbone=kind, progress=False)


def test_card_gives_the_whole_model_size_and_says_torchao_is_needed(pair):
    from lighttoken_hf.cards import card_facts, model_card

    _, dense_backbone, int8 = pair
    rows = dict(card_facts(int8)["sections"]["size"])
    report = int8.compression_report
    assert f"{report.model_fp32_nbytes / report.model_nbytes_after:.2f}x smaller than fp32" in rows["whole model"]
    assert "backbone" in rows["parts of the whole model"] and "int8" in rows["backbone Linear layers"]
    assert "pip install torchao" in str(model_card(int8))
    assert "pip install torchao" not in str(model_card(dense_backbone))
    assert "pip install compressed-tensors" not in str(model_card(int8))
    assert dict(card_facts(dense_backbone)["sections"]["size"])["backbone Linear layers"] == "as in the base model"


def test_cli_quantize_backbone_writes_a_quantized_checkpoint(tiny_model_dir, tmp_path, capsys):
    import json

    from lighttoken_hf.cli import main

    out = tmp_path / "out"
    args = ["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4", "--epochs", "1", "--no-progress"]
    assert main([*args, "--quantize-backbone", "int8"]) == 0
    assert "vs bf16" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"]["quant_method"] == "torchao"
    report = json.loads((out / "lighttoken_report.json").read_text(encoding="utf-8"))
    assert report["settings"]["quantize_backbone"] == "int8" and report["end_to_end"]["sentence_embedding_cosine"] > 0.9
    assert main([*args[:3], str(tmp_path / "x"), *args[4:], "--quantize-backbone", "int3"]) == 2


def test_cli_quantize_backbone_int4_and_its_card(pair, tiny_tokenizer, tmp_path):
    import json

    from lighttoken_hf.cli import main

    pair[0].save_pretrained(tmp_path / "bert")  # 64 wide: int4 groups of 32 fit
    tiny_tokenizer.save_pretrained(tmp_path / "bert")
    out = tmp_path / "out"
    args = ["compress", str(tmp_path / "bert"), "--out", str(out), "--ratio", "4", "--epochs", "1", "--no-progress"]
    texts = tmp_path / "calibration.txt"
    texts.write_text("the cat sat on the mat\n\na dog ran in the park\nhello world\n", encoding="utf-8")
    assert main([*args, "--quantize-backbone", "int4", "--calibration-texts", str(texts)]) == 0
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert config["quantization_config"]["quantization_status"] == "compressed"
    weights = config["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert weights["group_size"] == 32 and weights["scale_dtype"] == "torch.float16"
    with safe_open(out / "model.safetensors", "pt") as f:
        scales = [f.get_slice(k).get_dtype() for k in f.keys() if k.endswith("weight_scale")]  # noqa: SIM118
    assert scales and set(scales) == {"F16"}  # as the config says, though the layers hold them in fp32
    report = json.loads((out / "lighttoken_report.json").read_text(encoding="utf-8"))
    assert _file_tensor_bytes(out) == report["model_nbytes_after"]
    assert report["sensitivity"]["calibration"] == "given texts" and report["sensitivity"]["calibration_texts"] == 3
    assert "pip install compressed-tensors" in (out / "README.md").read_text(encoding="utf-8")


def _onnx_tensor_bytes(graph) -> int:
    """Bytes of an ONNX graph's initializers and Constant tensors."""
    from onnx import numpy_helper

    tensors = [*graph.graph.initializer]
    tensors += [n.attribute[0].t for n in graph.graph.node if n.op_type == "Constant" and n.attribute[0].t.dims]
    return sum(numpy_helper.to_array(t).nbytes for t in tensors)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_a_quantized_backbone_model_exports_to_onnx_with_equal_outputs(pair, int4, kind, tmp_path):
    """The export works and matches PyTorch, and the backbone stays quantized in the file (int8 by
    DequantizeLinear, int4 packed two per byte): the file is about the checkpoint's tensor bytes. The int4
    model is exported from its checkpoint folder, where it loads with its weights still packed."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from lighttoken_hf.compressor.report import model_nbytes, model_parts_nbytes
    from lighttoken_hf.onnx_export import export_onnx

    quantized = pair[2] if kind == "int8" else int4
    checkpoint_bytes = model_nbytes(quantized)
    if kind == "int8":
        path = export_onnx(quantized, tmp_path / "int8.onnx")
        assert not quantized.training
    else:
        quantized.save_pretrained(tmp_path / "int4")
        path = export_onnx(tmp_path / "int4", tmp_path / "int4.onnx")
    graph = onnx.load(str(path))
    ops = {node.op_type for node in graph.graph.node}
    assert ops >= ({"Cast"} if kind == "int8" else {"BitShift", "Cast"})
    if kind == "int4":  # its scales as the checkpoint stores them, in fp16
        scales = [t for t in graph.graph.initializer if t.name.endswith("_q_scale16")]
        assert len(scales) == sum(isinstance(m, torch.nn.Linear) for m in pair[1].backbone.modules())
        assert {t.data_type for t in scales} == {onnx.TensorProto.FLOAT16}
    float_matrices = [t for t in graph.graph.initializer if t.data_type == 1 and len(t.dims) == 2]
    float_matrices += [n.attribute[0].t for n in graph.graph.node if n.op_type == "Constant"
                       and n.attribute[0].t.data_type == 1 and len(n.attribute[0].t.dims) == 2]  # fmt: skip
    biggest = max(m.in_features * m.out_features for m in pair[1].backbone.modules() if isinstance(m, torch.nn.Linear))
    # no Linear weight of the backbone is left in float32 (the position embeddings are 64 x 64 floats)
    assert not [t.name for t in float_matrices if t.dims[0] * t.dims[1] >= biggest and "embeddings" not in t.name]
    assert sum(int(t.dims[0]) * int(t.dims[1]) for t in float_matrices) < biggest
    # the graph's tensors are the dense-backbone model's export's less (nearly) all the bytes quantization saved
    dense_graph = onnx.load(str(export_onnx(pair[1], tmp_path / "dense.onnx")))
    saved = model_parts_nbytes(pair[1])["backbone"] - model_parts_nbytes(quantized)["backbone"]
    assert _onnx_tensor_bytes(graph) <= _onnx_tensor_bytes(dense_graph) - 0.95 * saved
    assert path.stat().st_size <= 1.5 * checkpoint_bytes + 50_000  # plus the graph and its lookup tables
    with pytest.raises(ValueError, match="opset 13"):
        export_onnx(quantized if kind == "int8" else tmp_path / "int4", tmp_path / "old.onnx", opset=12)
    ids = torch.randint(0, 3000, (2, 9), generator=torch.Generator().manual_seed(5))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: feeds[i.name].numpy() for i in session.get_inputs()})[0]
    with torch.no_grad():
        want = quantized(**feeds).last_hidden_state.numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_a_tied_causal_lm_keeps_its_compressed_head_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    settings = lt.CompressionSettings(ratio=8, quantize_backbone="int8", schedule=FAST_SCHEDULE)
    model = lt.compress(AutoModelForCausalLM.from_config(config).eval(), settings, progress=False).eval()
    assert type(model.backbone.get_output_embeddings()).__name__ == "LightTokenLMHead"  # not quantized away
    assert type(model.backbone.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    ids = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(6))
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape == (1, 10)
    model.save_pretrained(tmp_path / "lm")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_int4_on_a_backbone_too_narrow_for_its_groups_is_a_clear_error():
    from transformers import BertModel

    from lighttoken_hf.compressor.backbone import INT4_GROUP_SIZE

    narrow = BertModel(tiny_bert_config(hidden_size=16, intermediate_size=24)).eval()  # no Linear input fits a group
    with pytest.raises(ValueError, match=f"multiple of {INT4_GROUP_SIZE}.*int8"):
        lt.compress(narrow, 4, quantize_backbone="int4", progress=False, schedule=FAST_SCHEDULE)


def test_int4_scales_are_the_least_squares_choice_among_the_shrunk_absmax_scales():
    from lighttoken_hf.compressor.backbone import INT4_SCALE_SHRINKS, _best_int4_scales

    groups = torch.randn(16, 5, 64, generator=torch.Generator().manual_seed(0)) * torch.rand(16, 5, 1) * 3
    groups[0, 0] = 0.0  # an all-zero group keeps a positive scale
    absmax = groups.abs().amax(-1).clamp_min(torch.finfo(torch.float32).tiny) / 7.5

    def error(scale):
        s = scale.unsqueeze(-1)
        return ((groups / s).round().clamp(-8, 7) * s - groups).square().sum(-1)

    best = _best_int4_scales(groups)
    candidates = torch.stack([error(absmax * shrink) for shrink in INT4_SCALE_SHRINKS])
    assert torch.allclose(error(best), candidates.min(0).values)
    assert (error(best) <= error(absmax)).all() and (error(best) < error(absmax)).float().mean() > 0.5
    assert (best > 0).all()


def _input_metric_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """Mean squared output error of ``approx`` against ``weight`` on inputs with second moment ``hessian``."""
    diff = (approx - weight).double()
    return float(torch.einsum("oi,ij,oj->", diff, hessian.double(), diff))


def test_gptq_int4_keeps_the_layer_outputs_better_than_nearest_rounding():
    from lighttoken_hf.compressor.backbone import (
        INT4_GROUP_SIZE,
        INT4_SCALE_DTYPE,
        _best_int4_scales,
        _dequantize,
        gptq_int4,
    )

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 192, generator=gen)
    mixing = torch.randn(192, 192, generator=gen) / 192**0.5 + torch.eye(192)  # correlated inputs, as in a model
    x = torch.randn(1024, 192, generator=gen) @ mixing
    x[:, 5] = 0.0  # an input that is always zero: its weights do not matter
    hessian = (x.T @ x / x.shape[0]).double()
    levels, scales = gptq_int4(weight, hessian)
    assert levels.dtype == torch.int8 and levels.shape == weight.shape and levels.min() >= -8 and levels.max() <= 7
    assert scales.shape == (48, 192 // INT4_GROUP_SIZE) and (scales > 0).all()
    assert torch.equal(scales, scales.to(INT4_SCALE_DTYPE).float())  # exact in the stored dtype
    groups = weight.reshape(48, -1, INT4_GROUP_SIZE)
    nearest_scales = _best_int4_scales(groups, INT4_SCALE_DTYPE)
    nearest = (groups / nearest_scales.unsqueeze(-1)).round().clamp(-8, 7) * nearest_scales.unsqueeze(-1)
    gptq_error = _input_metric_error(weight, _dequantize(levels, scales), hessian)
    nearest_error = _input_metric_error(weight, nearest.reshape(weight.shape), hessian)
    assert gptq_error < 0.8 * nearest_error
    levels, scales = gptq_int4(weight, hessian, group_size=64, scale_dtype=torch.float32)  # another grid
    assert scales.shape == (48, 192 // 64)
    assert _input_metric_error(weight, _dequantize(levels, scales), hessian) < nearest_error
    with pytest.raises(ValueError, match=f"multiple of {INT4_GROUP_SIZE}"):
        gptq_int4(weight[:, :100], hessian[:100, :100])


def test_input_hessians_are_each_linear_layers_input_second_moment(tiny_bert_config):
    from transformers import BertModel

    from lighttoken_hf.compressor.backbone import input_hessians

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config).eval()
    ids = torch.randint(5, tiny_bert_config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # padding positions are not inputs the layer must keep
    seen: list[torch.Tensor] = []
    layer = model.encoder.layer[0].intermediate.dense
    handle = layer.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    hessians = input_hessians(model, [{"input_ids": ids, "attention_mask": mask}])
    handle.remove()
    x = seen[0][mask.bool()].double()
    name = "encoder.layer.0.intermediate.dense"
    assert torch.allclose(hessians[name], x.T @ x / x.shape[0])
    assert set(hessians) == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    with pytest.raises(ValueError, match="no input"):
        input_hessians(model, [])


def test_input_hessians_of_a_decoder_do_not_run_its_head():
    """A LightToken decoder's head (vocabulary x positions logits) is not a layer to quantize: the calibration
    forward stops before it, and every Linear's statistics are still those of its inputs."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lighttoken_hf.compressor.backbone import input_hessians

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    model = lt.compress(AutoModelForCausalLM.from_config(config).eval(), 4, progress=False, schedule=FAST_SCHEDULE)
    ids = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(1))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, inputs, n=n: seen.setdefault(n, inputs[0].detach()))
               for n, m in linears.items()]  # fmt: skip
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    head_calls: list[int] = []
    model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    hessians = input_hessians(model, [{"input_ids": ids}, {"input_ids": ids}])
    assert head_calls == []
    assert set(hessians) == set(linears) and len(linears) == 14
    for name, x in seen.items():
        x = x.reshape(-1, x.shape[-1]).double()
        assert torch.allclose(hessians[name], x.T @ x / x.shape[0], atol=1e-6), name


def test_int4_backbone_stores_the_calibrated_rounding_and_keeps_outputs_closer(pair, tiny_tokenizer):
    from lighttoken_hf.compressor.backbone import (
        _dequantize,
        calibration_batches,
        gptq_int4,
        input_hessians,
        quantize_backbone,
    )
    from lighttoken_hf.compressor.frequencies import general_text_samples
    from lighttoken_hf.compressor.metrics import tokenized_batches

    _, dense_backbone, _ = pair
    calibration = calibration_batches(tiny_tokenizer)
    calibrated = quantize_backbone(dense_backbone, "int4", calibration).eval()
    nearest = quantize_backbone(dense_backbone, "int4").eval()
    held_out = list(tokenized_batches(tiny_tokenizer, general_text_samples(32, seed=7), batch_size=8,
                                      max_length=64, device=torch.device("cpu")))  # fmt: skip
    errors = {}
    with torch.no_grad():
        for label, candidate in (("calibrated", calibrated), ("nearest", nearest)):
            errors[label] = sum(
                float((candidate(**b).last_hidden_state - dense_backbone(**b).last_hidden_state).square().sum())
                for b in held_out
            )
    assert errors["calibrated"] < errors["nearest"]
    # the stored weights (unpacked by those forwards) are exactly the calibrated rounding of the dense ones
    hessians = input_hessians(dense_backbone, calibration)
    for name in ("backbone.encoder.layer.0.attention.output.dense", "backbone.encoder.layer.0.output.dense"):
        expected = _dequantize(*gptq_int4(dense_backbone.get_submodule(name).weight, hessians[name]))
        assert torch.allclose(calibrated.get_submodule(name).weight, expected, atol=1e-6)


def test_an_int4_decoder_saves_and_reloads_in_the_dtype_it_computes_in(tmp_path):
    """A decoder's first parameter after the (reordered) embedding is its first layer's int4 scale, written in
    fp16: the checkpoint must still say float32, or ``from_pretrained`` builds the whole model in fp16."""
    import json

    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    quantized = lt.compress(model, 4, quantize_backbone="int4", progress=False, schedule=FAST_SCHEDULE)
    assert quantized.dtype == torch.float32
    quantized.save_pretrained(tmp_path / "int4")
    assert json.loads((tmp_path / "int4" / "config.json").read_text(encoding="utf-8"))["dtype"] == "float32"
    fresh = type(quantized).from_pretrained(tmp_path / "int4").eval()
    ids = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = fresh(input_ids=ids).logits
    assert fresh.dtype == logits.dtype == torch.float32
    assert {m.weight.dtype for m in fresh.modules() if isinstance(m, torch.nn.Linear)} == {torch.float32}


def test_an_int4_decoder_stores_its_grouped_query_value_projections_in_int6(int4, tmp_path, caplog):
    """Grouped-query attention's value projections (fewer outputs than inputs) get 6 bits on int4's groups; the
    other Linears stay int4, an encoder's square ``value`` layers too; the bytes reported are the file's."""
    import json

    from transformers import AutoModelForCausalLM, LlamaConfig

    from lighttoken_hf.compressor.backbone import INT4_GROUP_SIZE, INT4_VALUE_BITS, value_projections

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    quantized = lt.compress(model, 4, quantize_backbone="int4", progress=False, schedule=FAST_SCHEDULE).eval()
    names = value_projections(quantized)
    assert len(names) == 2 and all(n.endswith("self_attn.v_proj") for n in names)
    assert quantized.compression_report.backbone_rounding.endswith("; grouped-query value projections in int6: 2")
    quantized.save_pretrained(tmp_path / "int4")
    groups = json.loads((tmp_path / "int4" / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [4, INT4_VALUE_BITS]
    fresh = type(quantized).from_pretrained(tmp_path / "int4").eval()
    assert "Could not match" not in caplog.text  # compressed-tensors warns of a config target that matched nothing
    linears = {n: m for n, m in fresh.named_modules() if isinstance(m, torch.nn.Linear) and hasattr(m, "weight_packed")}
    for name, module in linears.items():  # 32 values per `bits` int32 words
        bits = INT4_VALUE_BITS if name in names else 4
        assert module.weight_packed.shape[-1] == module.in_features * bits // 32, name
    report = quantized.compression_report
    weights = {n: m.in_features * m.out_features for n, m in linears.items()}
    packed = sum(w * (INT4_VALUE_BITS if n in names else 4) // 8 for n, w in weights.items())
    scales = 2 * sum(weights.values()) // INT4_GROUP_SIZE
    assert report.model_parts_after["backbone"] == packed + scales + 16 * len(linears)
    assert _file_tensor_bytes(tmp_path / "int4") == report.model_nbytes_after
    ids = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, quantized(input_ids=ids).logits, atol=1e-5)
    for name in names:  # levels beyond int4's -8..7 in groups of INT4_GROUP_SIZE, within int6's -32..31
        weight = fresh.get_submodule(name).weight.detach()
        scale = fresh.get_submodule(name).weight_scale.detach().float().repeat_interleave(INT4_GROUP_SIZE, dim=1)
        levels = weight.float() / scale
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert levels.abs().max() > 8 and levels.min() >= -32 and levels.max() <= 31
    assert value_projections(int4) == []  # square value layers: no grouped-query attention
    # ONNX: int6 levels one per byte (int8), the rest packed two per byte; logits as in PyTorch
    import numpy as np
    import onnx
    import onnxruntime as ort

    from lighttoken_hf.onnx_export import export_onnx

    path = export_onnx(tmp_path / "int4", tmp_path / "int4.onnx")
    graph = onnx.load(str(path)).graph
    int8_levels = [t for t in graph.initializer if t.name.endswith("_q_levels")]
    assert [tuple(t.dims) for t in int8_levels] == [(32, 64)] * 2
    assert {t.data_type for t in int8_levels} == {onnx.TensorProto.INT8}
    assert len([t for t in graph.initializer if t.name.endswith("_q_packed")]) == len(linears) - 2
    assert not [t.name for t in graph.initializer if t.data_type == 1 and tuple(t.dims) in ((32, 64), (64, 32))]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
    got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    with torch.no_grad():
        assert np.abs(got - fresh(input_ids=ids).logits.numpy()).max() <= 1e-4
