"""A decoder LM's tied token matrix compressed by LightToken and by the alternatives, side by side.

    python benchmarks/lm_benchmark.py --model smollm2 --ratios 8 16 25
    python benchmarks/lm_benchmark.py --model gemma3 --ratios 8 25 --batch-size 1

Every method replaces the tied token matrix (input embedding and output layer) of the same model, the
GGUF file dequantized to float (the "original"), and is scored on held-out real paragraphs (the last
``--texts`` unique SQuAD v1.1 train contexts of ``--data-dir``; no default was chosen on them): perplexity
and its relative increase, next-token KL and top-1 agreement against the original, and a greedy sample.
Methods: LightToken at ``--ratios`` (``compress(model, ratio=R, tokenizer=tok)``, its defaults; time and
peak resident growth recorded) and at ``--encoder-metric-ratios`` with the encoder metric instead of the
LM metric (``sensitivity_metric="hidden_states"``); the GGUF block types that the ``gguf`` package can
quantize (Q8_0, Q5_0, Q4_0; its K-quants only dequantize); group-wise int4/int2 and row-wise int8/int4
(torchao's affine quantization when installed, else the same arithmetic in torch:
``baselines.quantize_rows``); product quantization (when ``faiss-cpu`` is installed) and truncated SVD at
``--baseline-ratios``. Ratios are against fp32 (bf16: half of it) and count every stored byte (scales,
codebooks, factors). Writes ``benchmarks/results/lm_<model>.json`` (after every row) and a
ratio-vs-perplexity plot ``.png`` (``--replot`` draws it again from the JSON; ``--append`` adds this run's
rows to the JSON's, the earlier runs' dates and commits recorded).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines  # noqa: E402
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402
from lm_cli_benchmark import gguf_model_file, held_out_texts  # noqa: E402

#: GGUF block types the ``gguf`` package quantizes (its K-quants raise NotImplementedError).
GGUF_TYPES = ("Q8_0", "Q5_0", "Q4_0")
#: (name, bits, group size) of the integer baselines; ``None``: one scale per row.
INTEGER_TYPES = (("int8-row", 8, None), ("int4-row", 4, None), ("int4-g32", 4, 32), ("int2-g32", 2, 32))


def gguf_roundtrip(matrix: Any, type_name: str) -> tuple[Any, int]:
    """``matrix`` quantized to a GGUF block type and back, and the quantized size in bytes."""
    import gguf
    import numpy as np
    import torch

    qtype = getattr(gguf.GGMLQuantizationType, type_name)
    packed = gguf.quants.quantize(matrix.numpy().astype(np.float32), qtype)
    return torch.from_numpy(np.asarray(gguf.quants.dequantize(packed, qtype)).copy()).float(), packed.nbytes


def with_matrix(model: Any, matrix: Any) -> Any:
    """A copy of ``model`` whose tied token matrix is ``matrix`` (the output layer reads it too)."""
    import torch

    replaced = copy.deepcopy(model)
    with torch.no_grad():
        replaced.get_input_embeddings().weight.copy_(matrix)
    return replaced


def baseline_matrices(matrix: Any, ratios: list[float], fixed: bool = True):
    """Yield (method, reconstructed matrix, stored bytes, seconds) for every alternative (``fixed``: also
    the GGUF and integer types, whose ratios are fixed by their formats)."""
    vocab, dim = matrix.shape
    for name in GGUF_TYPES if fixed else ():
        start = time.perf_counter()
        rebuilt, nbytes = gguf_roundtrip(matrix, name)
        yield f"gguf-{name}", rebuilt, nbytes, time.perf_counter() - start
    for name, bits, group in INTEGER_TYPES if fixed else ():
        start = time.perf_counter()
        result = baselines.quantize_rows(matrix, bits=bits, group_size=group)
        yield name, result.reconstructed, result.nbytes, time.perf_counter() - start
    for ratio in ratios:
        start = time.perf_counter()
        result = baselines.truncated_svd(matrix, rank=baselines.svd_rank_for_ratio(vocab, dim, ratio))
        yield f"svd-{ratio:g}x", result.reconstructed, result.nbytes, time.perf_counter() - start
        config = baselines.pq_config_for_ratio(vocab, dim, ratio)
        if config is not None and importlib.util.find_spec("faiss") is not None:  # PQ needs faiss-cpu
            start = time.perf_counter()
            result = baselines.product_quantization(matrix, m=config[0], nbits=config[1])
            yield f"pq-{ratio:g}x", result.reconstructed, result.nbytes, time.perf_counter() - start


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    families: dict[str, list[dict]] = {}
    for row in payload["rows"]:
        families.setdefault(row["family"], []).append(row)
    for family, rows in families.items():
        rows = sorted(rows, key=lambda r: r["ratio_vs_fp32"])
        ax.plot([r["ratio_vs_fp32"] for r in rows], [r["perplexity_compressed"] for r in rows],
                "o-" if family.startswith(("lighttoken", "svd", "pq")) else "s", label=family)  # fmt: skip
        if family in ("gguf", "integer"):
            for r in rows:
                ax.annotate(r["method"], (r["ratio_vs_fp32"], r["perplexity_compressed"]), fontsize=7)
    ax.axhline(payload["perplexity_original"], color="grey", ls="--", lw=0.8, label="original")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("token-matrix compression ratio vs fp32")
    ax.set_ylabel(f"perplexity ({payload['texts']['count']} held-out paragraphs)")
    ax.set_title(f"{payload['model']['name']}: tied token matrix, {payload['date'][:10]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, gemma3 or a .gguf file")
    parser.add_argument("--ratios", type=float, nargs="*", default=[8, 16, 25], help="LightToken ratios")
    parser.add_argument("--encoder-metric-ratios", type=float, nargs="*", default=[25],
                        help="LightToken ratios also run with the encoder metric (sensitivity_metric='hidden_states')")
    parser.add_argument("--baseline-ratios", type=float, nargs="*", default=[16, 25], help="SVD and PQ ratios")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false")
    parser.add_argument("--no-fixed-baselines", dest="fixed_baselines", action="store_false",
                        help="skip the GGUF and integer types (their ratios do not depend on --baseline-ratios)")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--reference-budget-gb", type=float, default=4.0,
                        help="memory for the original's cached predictions; batches past it are predicted again "
                        "for each method (Gemma-3's 262k vocabulary needs 0.5 MB per token)")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output-name", default=None)
    parser.add_argument("--replot", action="store_true", help="only draw the plot again from the output JSON")
    parser.add_argument("--append", action="store_true",
                        help="keep the output JSON's rows (same texts required); a method measured again is replaced")
    args = parser.parse_args(argv)
    output = REPO_ROOT / "benchmarks" / "results" / f"{args.output_name or 'lm_' + args.model}.json"
    if args.replot:
        plot(json.loads(output.read_text(encoding="utf-8")), output.with_suffix(".png"))
        return 0

    import lighttoken_hf as lt
    from lighttoken_hf.compressor.lm_metrics import lm_fidelity
    from lighttoken_hf.compressor.resources import PeakResidentMemory
    from lighttoken_hf.gguf import load_gguf

    texts = held_out_texts(args.data_dir, args.texts)
    gguf_file = gguf_model_file(args.model)
    model, tokenizer = load_gguf(gguf_file)
    matrix = model.get_input_embeddings().weight.detach().float().clone()
    dense_bytes = matrix.numel() * 4
    reference: list = []  # the original's predictions, computed once
    payload: dict[str, Any] = {
        "benchmark": "lm_benchmark",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"name": args.model, "file": gguf_file.name, "matrix": list(matrix.shape)},
        "texts": {"source": "SQuAD v1.1 train contexts (last unique ones)", "count": len(texts),
                  "max_length": args.max_length},  # fmt: skip
        "gguf_types_the_gguf_package_cannot_quantize": ["Q6_K", "Q4_K", "Q2_K"],
        "rows": [],
    }
    if args.append and output.is_file():
        earlier = json.loads(output.read_text(encoding="utf-8"))
        if earlier["texts"] != payload["texts"] or earlier["model"] != payload["model"]:
            raise SystemExit(f"--append: {output} was measured on other texts or another model")
        payload["rows"] = earlier["rows"]
        payload["earlier_runs"] = [*earlier.get("earlier_runs", []),
                                   {k: earlier[k] for k in ("date", "git", "args")}]  # fmt: skip

    def score(method: str, family: str, candidate: Any, nbytes: int, seconds: float, **extra: Any) -> None:
        held = lm_fidelity(model, candidate, tokenizer, texts, max_length=args.max_length,
                           batch_size=args.batch_size, reference=reference,
                           reference_budget_bytes=int(args.reference_budget_gb * 1024**3))  # fmt: skip
        rebuilt = candidate.get_input_embeddings().weight.detach().float()
        row = {
            "method": method, "family": family, "nbytes": nbytes, "ratio_vs_fp32": dense_bytes / nbytes,
            "ratio_vs_bf16": dense_bytes / 2 / nbytes, "bits_per_weight": nbytes * 8 / matrix.numel(),
            "rel_error": float((rebuilt - matrix).norm() / matrix.norm()), "compress_seconds": seconds, **extra,
            **{k: held[k] for k in ("perplexity_original", "perplexity_compressed", "perplexity_increase",
                                    "next_token_kl", "top1_agreement", "sample_compressed")},
        }  # fmt: skip
        payload["perplexity_original"] = held["perplexity_original"]
        payload["sample_original"] = held["sample_original"]
        payload["rows"] = [r for r in payload["rows"] if r["method"] != method] + [row]
        print(f"{method:<16} {row['ratio_vs_fp32']:6.1f}x  ppl {row['perplexity_compressed']:9.2f} "
              f"({row['perplexity_increase']:+.1%})  KL {row['next_token_kl']:.3f}  "
              f"top-1 {row['top1_agreement']:.3f}", flush=True)  # fmt: skip
        write_json(output, payload)  # what is measured so far survives an interrupted run

    runs = []  # each encoder-metric run right after the default run at its ratio
    for ratio in args.ratios:
        runs += [(ratio, "auto")] + [(ratio, "hidden_states")] * (ratio in args.encoder_metric_ratios)
    runs += [(ratio, "hidden_states") for ratio in args.encoder_metric_ratios if ratio not in args.ratios]
    for ratio, metric in runs:
        start = time.perf_counter()
        with PeakResidentMemory() as memory:
            compressed = lt.compress(model, ratio=ratio, tokenizer=tokenizer, progress=False,
                                     sensitivity_metric=metric)  # fmt: skip
        seconds = time.perf_counter() - start
        report = compressed.compression_report
        name, family = (f"lighttoken-{ratio:g}x", "lighttoken") if metric == "auto" else (
            f"lighttoken-{ratio:g}x-{metric}", f"lighttoken ({metric} metric)")  # fmt: skip
        stored = report.compressed_nbytes + (report.output_bias_nbytes or 0)  # the codes and the logit bias
        score(name, family, compressed, stored, seconds, peak_rss_growth_bytes=memory.growth,
              sensitivity=report.sensitivity, frequency_source=report.frequency_source,
              output_bias_nbytes=report.output_bias_nbytes)  # fmt: skip
        del compressed
    if args.baselines:
        for method, rebuilt, nbytes, seconds in baseline_matrices(matrix, args.baseline_ratios, args.fixed_baselines):
            family = method.split("-")[0] if method.startswith(("gguf", "svd", "pq")) else "integer"
            candidate = with_matrix(model, rebuilt)
            score(method, family, candidate, nbytes, seconds)
            del candidate
    plot(payload, output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
