"""ONNX export of a compressed decoder LM, measured on the real model: Gemma-3-270M (or SmolLM2) with its token
matrix compressed ``--ratio`` x by the library's defaults (float32 backbone), saved, exported without the KV
cache by ``export_onnx`` (decode inside the graph, ``onnx.checker`` run), and run by onnxruntime (CPU) on
held-out paragraphs (the last ``--texts`` unique SQuAD train contexts, up to ``--max-length`` tokens).

Writes ``benchmarks/results/onnx_<model>.json``: the ONNX file's size against the checkpoint's tensor bytes,
the export time and the resident memory it adds at its peak, the max abs difference of onnxruntime's logits
to PyTorch's and their top-1 agreement, and onnxruntime's median latency of one forward per paragraph.

    python benchmarks/onnx_lm.py --model gemma3 --ratio 16 --texts 4 --max-length 64

The export and the scoring run in a fresh process (the script again, with ``--checkpoint``), so the export's
peak memory is measured without what the compression left in this one. onnxruntime runs with constant folding
off (:data:`DISABLED`). ``--checkpoint DIR`` alone exports and scores a checkpoint saved with its tokenizer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402
from lm_cli_benchmark import gguf_model_file, held_out_texts  # noqa: E402

#: onnxruntime optimizers left off: constant folding would decode the tied head's whole matrix when the session
#: starts, holding every stage's intermediate V x d tensors at once (Gemma-3-270M: more than 24 GB)
DISABLED = ["ConstantFolding"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3", help="gemma3, smollm2 or a .gguf file")
    parser.add_argument("--ratio", type=float, default=16.0)
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="export and score this compressed checkpoint (with its tokenizer) instead of compressing")
    parser.add_argument("--compress-seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.checkpoint is not None:
        return measure(args)

    import lighttoken_hf as lt
    from lighttoken_hf.gguf import load_gguf

    model, tokenizer = load_gguf(gguf_model_file(args.model))
    start = time.perf_counter()
    compressed = lt.compress(model.eval(), ratio=args.ratio, tokenizer=tokenizer, progress=True).eval()
    compress_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="lighttoken-onnx-lm-") as folder:
        compressed.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model, compressed
        # a fresh process exports and scores it: its memory peak is the export's, not the compression's leftovers
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                   "--checkpoint", folder, "--compress-seconds", str(compress_seconds)]  # fmt: skip
        return subprocess.run(command, check=False).returncode


def measure(args: argparse.Namespace) -> int:
    """Export ``args.checkpoint`` to ONNX and score onnxruntime against PyTorch on the held-out paragraphs."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lighttoken_hf  # noqa: F401 - registers the LightToken classes with the Auto classes
    from lighttoken_hf.compressor.resources import PeakResidentMemory
    from lighttoken_hf.onnx_export import export_onnx

    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"onnx_{Path(args.model).stem}.json"
    texts = held_out_texts(args.data_dir, args.texts)
    checkpoint = args.checkpoint
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    payload: dict[str, Any] = {
        "benchmark": "onnx_lm",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("checkpoint", "compress_seconds")},  # fmt: skip
        "model": {"name": args.model, "file": gguf_model_file(args.model).name},
        "texts": {"source": "SQuAD v1.1 train contexts (last unique ones)", "count": len(texts)},
        "compress_seconds": args.compress_seconds,
        "onnxruntime_disabled_optimizers": DISABLED,
    }
    with tempfile.TemporaryDirectory(prefix="lighttoken-onnx-lm-export-") as folder:
        tensor_bytes = sum(t.numel() * t.element_size() for file in checkpoint.glob("*.safetensors")
                           for t in load_file(file).values())  # fmt: skip
        start = time.perf_counter()
        with PeakResidentMemory() as export_memory:
            path = export_onnx(checkpoint, Path(folder) / "model.onnx")
        export_seconds = time.perf_counter() - start
        onnx_bytes = sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())
        compressed = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED)
        names = [i.name for i in session.get_inputs()]
        diffs, agreements, latencies = [], [], []
        for text in texts:
            batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=args.max_length)
            feeds = {name: batch[name].numpy().astype(np.int64) for name in names}
            with torch.no_grad():
                want = compressed(**{name: batch[name] for name in names}, use_cache=False).logits.numpy()
            got = session.run(["logits"], feeds)[0]
            diffs.append(float(np.abs(got - want).max()))
            agreements.append(float((got.argmax(-1) == want.argmax(-1)).mean()))
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                session.run(["logits"], feeds)
                runs.append((time.perf_counter() - start) * 1000)
            latencies.append(statistics.median(runs))
    payload.update({
        "checkpoint_tensor_bytes": tensor_bytes,
        "onnx_bytes": onnx_bytes,
        "onnx_vs_checkpoint": onnx_bytes / tensor_bytes,
        "export_seconds": export_seconds,
        "export_peak_memory_growth_bytes": export_memory.growth,
        "export_peak_memory_exact": export_memory.exact,
        "max_abs_logit_diff": max(diffs),
        "top1_agreement_onnx_vs_pytorch": statistics.mean(agreements),
        "latency_ms_median_per_text": statistics.median(latencies),
    })  # fmt: skip
    write_json(output, payload)
    print({k: v for k, v in payload.items() if k not in ("machine", "args")}, flush=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
