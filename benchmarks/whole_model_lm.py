"""Whole-model size against perplexity for a decoder LM (step 8): LightToken for the tied token matrix plus
a quantized backbone, against the GGUF file the model ships as (the reference its users already hold).

    python benchmarks/whole_model_lm.py --model gemma3 --ratios 25 --backbones int4 --texts 50

The "original" is the GGUF file dequantized to float (as in ``lm_benchmark.py``), so the GGUF row's
perplexity is the original's and its size is the file's. Each LightToken row compresses the token matrix at
a ratio with ``quantize_backbone=`` each of ``--backbones`` (``none``: fp32 backbone) and gives every stored
byte (``model_parts_nbytes``: what the state dict holds), its ratio to the fp32 and bf16 model, the share of
each part, the compression time, and perplexity, next-token KL and top-1 agreement against the original on
held-out paragraphs (the last ``--texts`` unique SQuAD v1.1 train contexts, as ``lm_benchmark.py``).
Writes ``benchmarks/results/whole_model_<model>.json`` after every row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402
from lm_cli_benchmark import held_out_texts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3", help="gemma3, smollm2 or a .gguf file")
    parser.add_argument("--ratios", type=float, nargs="*", default=[25])
    parser.add_argument("--backbones", nargs="*", default=["int4"], choices=["none", "int8", "int4"])
    parser.add_argument("--texts", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    import lighttoken_hf as lt
    from lighttoken_hf import pretrained
    from lighttoken_hf.compressor.lm_metrics import lm_fidelity
    from lighttoken_hf.compressor.report import model_parts_nbytes
    from lighttoken_hf.gguf import load_gguf

    texts = held_out_texts(args.data_dir, args.texts)
    path = {"smollm2": pretrained.smollm2_gguf_path, "gemma3": pretrained.gemma3_gguf_path}.get(args.model)
    gguf_file = path() if path else Path(args.model)
    model, tokenizer = load_gguf(gguf_file)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    fp32 = 4 * params
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"whole_model_{args.model}.json"
    payload: dict[str, Any] = {
        "benchmark": "whole_model_lm",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"name": args.model, "file": gguf_file.name, "parameters": params, "fp32_nbytes": fp32},
        "texts": {"source": "SQuAD v1.1 train contexts (last unique ones)", "count": len(texts),
                  "max_length": args.max_length},  # fmt: skip
        "rows": [],
    }
    reference: list = []

    def add(method: str, nbytes: int, **extra: Any) -> None:
        row = {"method": method, "nbytes": nbytes, "ratio_vs_fp32": fp32 / nbytes, "ratio_vs_bf16": fp32 / 2 / nbytes,
               **extra}  # fmt: skip
        payload["rows"].append(row)
        write_json(output, payload)
        shown = {k: v for k, v in row.items() if k not in ("parts", "sample_compressed")}
        print(shown, flush=True)

    held = lm_fidelity(model, model, tokenizer, texts, max_length=args.max_length, batch_size=args.batch_size,
                       reference=reference, prompt=None)  # fmt: skip
    add(f"gguf {gguf_file.name} (the original here)", gguf_file.stat().st_size,
        perplexity=held["perplexity_original"], perplexity_increase=0.0)  # fmt: skip
    for ratio in args.ratios:
        for backbone in args.backbones:
            start = time.perf_counter()
            compressed = lt.compress(model, ratio=ratio, tokenizer=tokenizer, progress=False,
                                     quantize_backbone=None if backbone == "none" else backbone)  # fmt: skip
            seconds = time.perf_counter() - start
            parts = model_parts_nbytes(compressed)
            held = lm_fidelity(model, compressed, tokenizer, texts, max_length=args.max_length,
                               batch_size=args.batch_size, reference=reference)  # fmt: skip
            add(f"lighttoken-{ratio:g}x + {backbone} backbone", sum(parts.values()), parts=parts,
                token_matrix_ratio=compressed.compression_report.ratio, compress_seconds=seconds,
                perplexity=held["perplexity_compressed"], perplexity_increase=held["perplexity_increase"],
                next_token_kl=held["next_token_kl"], top1_agreement=held["top1_agreement"],
                sample_compressed=held.get("sample_compressed"))  # fmt: skip
            del compressed
    return 0


if __name__ == "__main__":
    sys.exit(main())
