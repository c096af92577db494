"""Whole-model size against perplexity for a decoder LM: LightToken for the tied token matrix plus a quantized
backbone, against the GGUF file the model ships as (the reference its users already hold).

    python benchmarks/whole_model_lm.py --model gemma3 --ratios 16 25 --backbones none int4 --texts 100

The "original" is the GGUF file dequantized to float32 (as in ``lm_benchmark.py``): its perplexity is the GGUF
file's own, so the GGUF row has the original's perplexity and the file's size. Then one library's quantization
of everything, the tied token matrix (stored once) with the Linear layers (``whole_model_baselines.py``): torchao
int8 (one scale per row or output channel), compressed-tensors int4 (``quantize_backbone="int4"``'s format and
rounding, on the same calibration text; ``--no-everything`` skips them). Each ratio compresses the token
matrix once (library defaults) and scores it with each of ``--backbones`` (``none``: the float32 backbone;
``int8``/``int4``: ``quantize_backbone``, as ``compress(..., quantize_backbone=...)`` does). A row gives every
stored byte (``model_parts_nbytes``: what the state dict holds, packed int4/int8 data with their scales), its
ratio to the float32 and bf16 model, the share of each part, the compression time, and perplexity, next-token
KL and top-1 agreement against the original on held-out paragraphs (the last ``--texts`` unique SQuAD v1.1
train contexts, as ``lm_benchmark.py``; no default was chosen on them). ``--calibration-texts N`` passes the
first N unique contexts (never the held-out ones) as ``calibration_texts``, as ``lighttoken compress
--calibration-texts FILE`` does: the calibration text of the token matrix's metric and of int4's rounding
(default 0: the library's, wordfreq pseudo-sentences, and for int4 text the model writes as well). The
compressed token matrix is decoded once for scoring (``materialize()``): the numbers are the stored model's,
the speed is not measured here. Writes ``benchmarks/results/whole_model_<model>.{json,png}`` (the JSON after every row).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, pareto_front, write_json  # noqa: E402
from lm_cli_benchmark import gguf_model_file, held_out_texts, squad_contexts  # noqa: E402
from whole_model_baselines import int4_everything, int8_everything  # noqa: E402


def materialized(model: Any) -> Any:
    """``model`` with every LightToken matrix decoded once (a dense cache for inference; the stored bytes are
    unchanged)."""
    from lighttoken_hf.core.lighttoken_codec import LightTokenEmbedding

    for module in model.modules():
        if isinstance(module, LightTokenEmbedding):
            module.materialize()
    return model


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for row in payload["rows"]:
        label = row["method"].split(" (")[0].replace("LightToken ", "LT ").replace(" backbone", "")
        label = label.replace("torchao ", "").replace("compressed-tensors ", "")
        gguf = label.startswith("GGUF")  # beside int8 everything: its label goes below the point
        ax.scatter(row["nbytes"] / 1e6, row["perplexity"], s=40)
        ax.annotate("GGUF file" if gguf else label, (row["nbytes"] / 1e6, row["perplexity"]), fontsize=7,
                    xytext=(-30, -12) if gguf else (4, 4), textcoords="offset points")  # fmt: skip
    front = pareto_front(payload["rows"], "ratio_vs_fp32", "perplexity", lower_is_better=True)
    ax.plot([r["nbytes"] / 1e6 for r in front], [r["perplexity"] for r in front], "k--", lw=0.8,
            label="Pareto front")  # fmt: skip
    original = payload["rows"][0]["perplexity"]
    ax.axhline(original * 1.3, color="grey", ls=":", lw=0.8, label="original + 30%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("whole model, MB (every stored byte)")
    ax.set_ylabel(f"perplexity ({payload['texts']['count']} held-out paragraphs)")
    ax.set_title(f"{payload['model']['name']}: whole-model size vs perplexity ({payload['date'][:10]})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3", help="gemma3, smollm2 or a .gguf file")
    parser.add_argument("--ratios", type=float, nargs="*", default=[16, 25])
    parser.add_argument("--backbones", nargs="+", default=["none", "int4"], choices=["none", "int8", "int4"])
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--calibration-texts", type=int, default=0, metavar="N",
                        help="calibrate on the first N unique SQuAD contexts (default 0: the library default)")
    parser.add_argument("--everything", action=argparse.BooleanOptionalAction, default=True,
                        help="score the int8/int4-everything rows (--no-everything: only the LightToken rows)")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--replot", action="store_true", help="only redraw the plot of an existing JSON")
    args = parser.parse_args(argv)
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"whole_model_{Path(args.model).stem}.json"
    if args.replot:
        plot(json.loads(output.read_text(encoding="utf-8")), output.with_suffix(".png"))
        return 0

    import lighttoken_hf as lt
    from lighttoken_hf.compressor.backbone import calibration_batches, quantize_backbone
    from lighttoken_hf.compressor.calibration import backbone_calibration_texts
    from lighttoken_hf.compressor.lm_metrics import lm_fidelity
    from lighttoken_hf.compressor.report import model_parts_nbytes
    from lighttoken_hf.gguf import load_gguf

    texts = held_out_texts(args.data_dir, args.texts)
    gguf_file = gguf_model_file(args.model)
    model, tokenizer = load_gguf(gguf_file)
    model.eval()
    parts = model_parts_nbytes(model)
    fp32 = sum(parts.values())
    payload: dict[str, Any] = {
        "benchmark": "whole_model_lm",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"name": args.model, "file": gguf_file.name, "fp32_nbytes": fp32},
        "texts": {"source": "SQuAD v1.1 train contexts (last unique ones)", "count": len(texts),
                  "max_length": args.max_length},  # fmt: skip
        "rows": [],
    }
    reference: list = []
    calibration_texts = squad_contexts(args.data_dir, args.calibration_texts)[: args.calibration_texts] or None
    if calibration_texts is not None and set(calibration_texts) & set(texts):
        raise SystemExit("--calibration-texts overlaps the held-out texts: lower it or --texts")
    # int4's rounding: as compress(..., calibration_texts=..., quantize_backbone="int4")
    int4_texts, int4_source = backbone_calibration_texts(model, tokenizer, calibration_texts, progress=True)
    payload["calibration"] = (
        {"source": "SQuAD v1.1 train contexts (first unique ones)", "count": len(calibration_texts)}
        if calibration_texts
        else {"source": "library defaults", "int4": int4_source}
    )
    calibration = calibration_batches(tokenizer, int4_texts)

    def add(method: str, nbytes: int, **extra: Any) -> None:
        row = {"method": method, "nbytes": nbytes, "ratio_vs_fp32": fp32 / nbytes, "ratio_vs_bf16": fp32 / 2 / nbytes,
               **extra}  # fmt: skip
        if "parts" in row:
            row["shares"] = {part: n / nbytes for part, n in row["parts"].items()}
        payload["rows"].append(row)
        write_json(output, payload)
        shown = {k: v for k, v in row.items() if k not in ("parts", "shares", "sample_compressed")}
        print(shown, flush=True)

    def score(candidate: Any) -> dict[str, Any]:
        start = time.perf_counter()
        held = lm_fidelity(model, candidate, tokenizer, texts, max_length=args.max_length,
                           batch_size=args.batch_size, reference=reference)  # fmt: skip
        return {"perplexity": held["perplexity_compressed"], "perplexity_increase": held["perplexity_increase"],
                "next_token_kl": held["next_token_kl"], "top1_agreement": held["top1_agreement"],
                "sample_compressed": held.get("sample_compressed"),
                "score_seconds": time.perf_counter() - start}  # fmt: skip

    start = time.perf_counter()
    held = lm_fidelity(model, model, tokenizer, texts, max_length=args.max_length, batch_size=args.batch_size,
                       reference=reference, prompt=None)  # fmt: skip
    original = {"perplexity": held["perplexity_original"], "perplexity_increase": 0.0, "next_token_kl": 0.0,
                "top1_agreement": 1.0, "score_seconds": time.perf_counter() - start}  # fmt: skip
    add("original (float32)", fp32, parts=parts, **original)
    add(f"GGUF {gguf_file.name} (the file the original is read from)", gguf_file.stat().st_size, **original)
    everything = (("torchao int8 everything", int8_everything),
                  ("compressed-tensors int4 everything", lambda m: int4_everything(m, calibration)))
    for method, quantize in everything if args.everything else ():
        start = time.perf_counter()
        candidate = quantize(model)
        quantize_seconds = time.perf_counter() - start
        parts = model_parts_nbytes(candidate)
        add(method, sum(parts.values()), parts=parts, quantize_seconds=quantize_seconds, **score(candidate))
        del candidate
    for ratio in args.ratios:
        start = time.perf_counter()
        compressed = lt.compress(model, ratio=ratio, tokenizer=tokenizer, calibration_texts=calibration_texts,
                                 progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        for backbone in args.backbones:
            start = time.perf_counter()
            candidate = compressed if backbone == "none" else quantize_backbone(compressed, backbone, calibration)
            quantize_seconds = time.perf_counter() - start
            parts = model_parts_nbytes(candidate)
            add(f"LightToken {ratio:g}x + {'float32' if backbone == 'none' else backbone} backbone",
                sum(parts.values()), parts=parts, token_matrix_ratio=compressed.compression_report.ratio,
                compress_seconds=seconds, quantize_seconds=quantize_seconds,
                **score(materialized(candidate)))  # fmt: skip
            del candidate
        del compressed
    plot(payload, output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
