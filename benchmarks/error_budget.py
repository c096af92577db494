"""Where does LightToken's end-to-end error come from? An error budget by token frequency.

Compresses the model's embedding with the library defaults, then measures the end-to-end cosine of
mean-pooled sentence embeddings (original vs compressed) on real text while rows of chosen token groups
are put back exactly. A group whose exact rows recover much of the gap is where bits would pay off.

Groups: the K tokens occurring most often in the text itself (an oracle: the compressor never sees the
text), and buckets of the compressor's own task-agnostic frequency rank (wordfreq general English). The
report also gives each bucket's share of the text's token occurrences and its mean row error.

    python benchmarks/error_budget.py --ratio 25 --text ../shared/data/glue/CoLA/dev.parquet

Writes ``benchmarks/results/error_budget_<model>_<ratio>x.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

DEFAULT_TOP_K = (20, 100, 300, 1000, 3000)
DEFAULT_BUCKETS = (0, 100, 1000, 3000, 10000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm, mpnet, or a folder loadable by AutoModel")
    parser.add_argument("--ratio", type=float, default=25.0)
    parser.add_argument(
        "--text",
        default=str(REPO_ROOT.parent / "shared" / "data" / "glue" / "CoLA" / "dev.parquet"),
        help="parquet file with the sentences (held-out text: not the text the defaults were chosen on)",
    )
    parser.add_argument("--column", default="sentence")
    parser.add_argument("--num-sentences", type=int, default=400)
    parser.add_argument("--top-k", type=int, nargs="+", default=list(DEFAULT_TOP_K))
    parser.add_argument("--buckets", type=int, nargs="+", default=list(DEFAULT_BUCKETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(BENCH_DIR / "results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    import pandas as pd
    from bench_io import git_info, machine_info
    from fidelity_benchmark import resolve_model
    from transformers import AutoModel, AutoTokenizer

    import lighttoken_hf
    from lighttoken_hf.compressor.frequencies import general_text_frequencies
    from lighttoken_hf.compressor.metrics import mean_cosine, mean_pooled_embeddings

    text_path = Path(args.text)
    if not text_path.is_file():
        raise SystemExit(
            f"--text {text_path} does not exist (see ../shared/data/README.md or pass a parquet file)"
        )
    label, model_path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).float().eval()
    dense = model.get_input_embeddings().weight.detach().clone()
    vocab = dense.shape[0]
    sentences = pd.read_parquet(text_path)[args.column].astype(str).tolist()[: args.num_sentences]

    def encode() -> torch.Tensor:
        return mean_pooled_embeddings(model, tokenizer, sentences, batch_size=64, max_length=128)

    def e2e(matrix: torch.Tensor) -> float:
        model.get_input_embeddings().weight.data.copy_(matrix)
        try:
            return round(mean_cosine(reference, encode()), 4)
        finally:
            model.get_input_embeddings().weight.data.copy_(dense)

    reference = encode()
    embedding = lighttoken_hf.compress(dense, ratio=args.ratio, tokenizer=tokenizer, seed=args.seed)
    with torch.no_grad():
        decoded = embedding.weight.detach().float().clone()
    row_error = (decoded - dense).norm(dim=1) / dense.norm(dim=1).clamp_min(1e-12)

    counts = torch.zeros(vocab)
    for ids in tokenizer(sentences)["input_ids"]:
        counts.index_add_(0, torch.tensor(ids), torch.ones(len(ids)))
    total = float(counts.sum())
    occurrence_order = torch.argsort(counts, descending=True, stable=True)
    general_order = torch.argsort(general_text_frequencies(tokenizer, vocab), descending=True, stable=True)

    def with_exact(rows: torch.Tensor) -> torch.Tensor:
        fixed = decoded.clone()
        fixed[rows] = dense[rows]
        return fixed

    top_k = []
    for k in args.top_k:
        rows = occurrence_order[:k]
        top_k.append(
            {
                "k": k,
                "occurrence_share": round(float(counts[rows].sum()) / total, 4),
                "mean_row_error": round(float(row_error[rows].mean()), 4),
                "e2e_with_exact_rows": e2e(with_exact(rows)),
            }
        )
    edges = [*sorted(set(args.buckets)), vocab]
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows = general_order[lo:hi]
        buckets.append(
            {
                "general_rank": f"{lo}-{hi}",
                "rows": len(rows),
                "occurrence_share": round(float(counts[rows].sum()) / total, 4),
                "mean_row_error": round(float(row_error[rows].mean()), 4),
                "e2e_with_exact_rows": e2e(with_exact(rows)),
            }
        )
    payload: dict[str, Any] = {
        "benchmark": "error_budget",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": machine_info(),
        "args": vars(args),
        "model": {"label": label, "path": model_path, "vocab_size": vocab, "embedding_dim": dense.shape[1]},
        "text": {"path": str(text_path), "sentences": len(sentences), "tokens": int(total)},
        "real_ratio": round(float(embedding.compression_ratio), 3),
        "rel_error": round(float((decoded - dense).norm() / dense.norm()), 4),
        "e2e": e2e(decoded),
        "top_k_by_occurrence": top_k,
        "buckets_by_general_frequency": buckets,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"error_budget_{label}_{args.ratio:g}x"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(payload))
    print(markdown(payload))
    return 0


def markdown(payload: dict[str, Any]) -> str:
    """The error budget as two Markdown tables."""
    text = payload["text"]
    cpu = payload["machine"].get("cpu_model") or "unknown CPU"
    lines = [
        f"### Error budget: {payload['model']['label']} at {payload['real_ratio']}x",
        "",
        f"Run {payload['date']} on {cpu}; {text['sentences']} sentences "
        f"({text['tokens']} tokens) from `{Path(text['path']).parent.name}/{Path(text['path']).name}`. "
        f"Defaults: rel err {payload['rel_error']}, end-to-end cosine {payload['e2e']}.",
        "",
        "| exact rows: top-K tokens of the text | share of occurrences | their mean row error | e2e cos |",
        "|---:|---:|---:|---:|",
    ]
    for row in payload["top_k_by_occurrence"]:
        lines.append(
            f"| {row['k']} | {row['occurrence_share']:.3f} | {row['mean_row_error']:.3f} | "
            f"{row['e2e_with_exact_rows']:.4f} |"
        )
    lines += [
        "",
        "| exact rows: general-frequency rank | rows | share of occurrences | their mean row error | e2e cos |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in payload["buckets_by_general_frequency"]:
        lines.append(
            f"| {row['general_rank']} | {row['rows']} | {row['occurrence_share']:.3f} | "
            f"{row['mean_row_error']:.3f} | {row['e2e_with_exact_rows']:.4f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
