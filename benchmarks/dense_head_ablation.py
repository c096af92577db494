"""Ablation: a dense int4/int8 residual for the most frequent rows, paid for from the same byte budget.

For each (share, bits): compress the embedding with the library defaults into ``(1 - share)`` of the
budget, then quantize the residual ``E - E_hat`` of the ``N`` most frequent rows (the compressor's own
wordfreq ranking) rowwise and symmetrically to ``bits`` bits with one fp16 scale per row, where ``N``
spends the remaining ``share`` of the budget. Reports rel-err and the end-to-end sentence-embedding
cosine on SST-2 dev and CoLA dev text. ``share = 0`` is the default compressor.

    python benchmarks/dense_head_ablation.py --ratio 25

Writes ``benchmarks/results/dense_head_ablation_<model>_<ratio>x.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
DATA = BENCH_DIR.parent.parent / "shared" / "data" / "glue"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--ratio", type=float, default=25.0)
    parser.add_argument("--configs", default="0:4,0.15:4,0.3:4,0.45:4,0.3:8", help="share:bits,...")
    parser.add_argument("--data-dir", default=str(DATA), help="folder with SST-2/ and CoLA/ dev.parquet")
    parser.add_argument("--num-sentences", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default=str(BENCH_DIR / "results"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    import pandas as pd
    from bench_io import git_info, machine_info
    from fidelity_benchmark import resolve_model
    from transformers import AutoModel, AutoTokenizer

    import lighttoken_hf
    from lighttoken_hf.compressor.frequencies import general_text_frequencies
    from lighttoken_hf.compressor.metrics import mean_cosine, mean_pooled_embeddings

    label, path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).float().eval()
    dense = model.get_input_embeddings().weight.detach().clone()
    vocab, dim = dense.shape
    texts = {}
    for task in ("SST-2", "CoLA"):
        file = Path(args.data_dir) / task / "dev.parquet"
        if not file.is_file():
            raise SystemExit(f"{file} is missing: pass --data-dir (see ../shared/data/README.md)")
        texts[task] = pd.read_parquet(file)["sentence"].tolist()[: args.num_sentences]

    def encode(name: str) -> torch.Tensor:
        return mean_pooled_embeddings(model, tokenizer, texts[name], batch_size=64, max_length=128)

    references = {name: encode(name) for name in texts}
    order = torch.argsort(general_text_frequencies(tokenizer, vocab), descending=True, stable=True)
    budget = vocab * dim * 4 / args.ratio
    rows = []
    for item in args.configs.split(","):
        share, bits = float(item.split(":")[0]), int(item.split(":")[1])
        per_row = dim * bits / 8 + 2  # packed codes + one fp16 scale
        n = int(share * budget / per_row)
        embedding = lighttoken_hf.compress(dense, budget_bytes=int(budget - n * per_row), tokenizer=tokenizer)
        decoded = embedding.weight.detach().float().clone()
        if n:
            head = order[:n]
            residual = dense[head] - decoded[head]
            qmax = 2 ** (bits - 1) - 1
            scale = (residual.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / qmax).half().float()
            decoded[head] += torch.clamp(torch.round(residual / scale), -qmax - 1, qmax) * scale
        row = {
            "share": share,
            "bits": bits,
            "head_rows": n,
            "rel_error": float((decoded - dense).norm() / dense.norm()),
        }
        model.get_input_embeddings().weight.data.copy_(decoded)
        row.update({f"e2e_{name}": mean_cosine(references[name], encode(name)) for name in texts})
        model.get_input_embeddings().weight.data.copy_(dense)
        rows.append(row)
        print(json.dumps(row), flush=True)
    payload = {
        "benchmark": "dense_head_ablation",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": machine_info(),
        "args": vars(args),
        "model": {"label": label, "path": path, "vocab_size": vocab, "embedding_dim": dim},
        "results": rows,
    }
    out = Path(args.output_dir) / f"dense_head_ablation_{label}_{args.ratio:g}x.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
