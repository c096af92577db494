"""Sweep LightToken options on all-MiniLM-L6-v2 to choose defaults by measurement.

Each configuration compresses the real embedding matrix and measures matrix fidelity plus the
end-to-end cosine of mean-pooled sentence embeddings (original vs compressed model) on two text sets:

* ``dev``: the first 300 SST-2 dev sentences — the only text used to *choose* defaults;
* ``held_out``: 300 CoLA dev sentences + 300 STS-B sentences — reported, never used to choose.

Usage (from the repo root, with ``../shared/data`` present or ``--data-dir``)::

    python benchmarks/sweep_defaults.py --ratio 25 --configs '{}' '{"tier_decay": 0.5}' ...
    python benchmarks/sweep_defaults.py --preset defaults    # the sweep behind docs/method.md
    python benchmarks/sweep_defaults.py --preset sensitivity --output benchmarks/results/sweep_sensitivity_25x.json

Writes ``benchmarks/results/sweep_<ratio>x.json`` (machine, date, commit, one record per config).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import lighttoken_hf as lt  # noqa: E402
from lighttoken_hf.compressor.metrics import sentence_embedding_cosine  # noqa: E402
from lighttoken_hf.fidelity import load_sentences_from_parquet  # noqa: E402
from lighttoken_hf.pretrained import default_model_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import git_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

PRESETS: dict[str, list[dict]] = {
    "defaults": [
        {},
        {"frequency_aware": False},
        {"tier_decay": 0.5},
        {"tier_decay": 0.25},
        {"frequency_power": 0.25},
        {"frequency_power": 1.0},
        {"frequency_share": 0.4},
        {"svd_rank": 0},
        {"schedule": {"max_epochs": 24, "tau_decay": 0.87}},
        {"schedule": {"refine_sweeps": 0}},
        {"schedule": {"refine_sweeps": 5}},
        {"loss": "cosine_bound"},
    ],
    # frequency_share by ratio (docs/method.md section 4): run with --ratio 25, 50 and 100
    "frequency_share": [
        {"frequency_share": 0.25},
        {"frequency_share": 0.4},
        {"frequency_share": 0.55},
        {"frequency_share": 0.7},
    ],
    # the sensitivity metric (docs/method.md section 6): how far to shrink it toward the identity
    "sensitivity": [
        {},
        {"sensitivity_shrinkage": 0.0},
        {"sensitivity_shrinkage": 0.5},
        {"sensitivity_weighted": False},
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratio", type=float, default=25.0)
    parser.add_argument("--configs", nargs="*", default=None, help="JSON dicts of compress() options")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = [json.loads(c) for c in args.configs] if args.configs else PRESETS[args.preset or "defaults"]
    glue = Path(args.data_dir) / "glue"
    if not glue.is_dir():
        print(f"error: no GLUE data under {glue}; pass --data-dir", file=sys.stderr)
        return 2
    dev = load_sentences_from_parquet(glue / "SST-2/dev.parquet", limit=300)
    held_out = load_sentences_from_parquet(
        glue / "CoLA/dev.parquet", limit=300
    ) + load_sentences_from_parquet(glue / "STS-B/train.parquet", column="sentence1", limit=300)
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    records = []
    for options in configs:
        start = time.perf_counter()
        compressed = lt.compress(model, ratio=args.ratio, tokenizer=tokenizer, progress=False, **options)
        seconds = time.perf_counter() - start
        report = compressed.compression_report
        record = {
            "options": options,
            "ratio": report.ratio,
            "compressed_nbytes": report.compressed_nbytes,
            **report.fidelity,
            "e2e_dev": sentence_embedding_cosine(model, compressed, tokenizer, dev),
            "e2e_held_out": sentence_embedding_cosine(model, compressed, tokenizer, held_out),
            "compress_seconds": seconds,
            "plan": {k: report.plan[k] for k in ("svd_rank", "stage_bits", "stage_rows")},
            "saturation": [s["saturation"] for s in report.stages],
        }
        records.append(record)
        print(
            json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}),
            flush=True,
        )
    out = Path(args.output or ROOT / "benchmarks" / "results" / f"sweep_{args.ratio:g}x.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **git_info(),  # commit and whether the tree had uncommitted changes
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cores": os.cpu_count(),
        },
        "threads": args.threads,
        "versions": {"torch": torch.__version__, "lighttoken_hf": lt.__version__},
        "dev_sentences": len(dev),
        "held_out_sentences": len(held_out),
    }
    out.write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
