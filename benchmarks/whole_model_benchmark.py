"""Whole-model size against fidelity on all-MiniLM-L6-v2: LightToken for the token matrix combined with
weight-only quantization of the backbone (torchao int8, compressed-tensors int4), against each library's
quantization of everything (embeddings included).

    python benchmarks/whole_model_benchmark.py [--ratios 25 100] [--sentences 1000] [--sts-limit 1000]

Rows: the original (fp32); torchao int8 weight-only on every Linear and on the word embedding (one scale per
row); compressed-tensors int4 (groups of 32, fp16 scales, as ``quantize_backbone="int4"``, the Linear layers
rounded against their inputs on the same calibration text) on every Linear and on the word embedding; LightToken at each
``--ratios`` with an fp32, an int8 and an int4 backbone (library defaults
otherwise). Each row: every stored byte of the model (``model_parts_nbytes``: what the state dict holds, packed
int4 and int8 data with their scales), its ratio to fp32 and bf16, the share of each part, the end-to-end cosine
of mean-pooled sentence embeddings against the original on held-out text (CoLA dev sentences and RTE dev
premises, as the fidelity benchmark's held-out column) and the zero-shot STS-B Spearman (a seeded sample of the
training pairs). Writes ``benchmarks/results/whole_model_minilm.{json,png}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, pareto_front, write_json  # noqa: E402
from whole_model_baselines import int4_everything, int8_everything  # noqa: E402

OUT = REPO_ROOT / "benchmarks" / "results" / "whole_model_minilm.json"


def held_out(data_dir: Path, limit: int) -> list[str]:
    """CoLA dev sentences then RTE dev premises (text no default was chosen on), the first ``limit``."""
    from lighttoken_hf.fidelity import load_sentences_from_parquet

    glue = data_dir / "glue"
    texts = load_sentences_from_parquet(glue / "CoLA" / "dev.parquet", "sentence")
    texts += load_sentences_from_parquet(glue / "RTE" / "dev.parquet", "sentence1")
    return texts[:limit]


def sts_sample(data_dir: Path, limit: int, seed: int = 0) -> tuple[list[str], list[str], list[float]]:
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "glue" / "STS-B" / "train.parquet").to_pydict()
    rows = np.sort(np.random.default_rng(seed).choice(len(table["label"]), size=limit, replace=False))
    return ([table["sentence1"][i] for i in rows], [table["sentence2"][i] for i in rows],
            [float(table["label"][i]) for i in rows])  # fmt: skip


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def loss(row: dict) -> float:  # 1 - cosine on a log axis: 0.9995 and 0.98 are far apart, as they should be
        return max(1.0 - row["e2e_cosine_held_out"], 1e-6)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for row in payload["rows"]:
        label = row["method"].replace("lighttoken-", "LT ").replace("-backbone", "").replace("-", " ")
        label = label.replace("torchao ", "").replace("compressed tensors ", "")
        ax.scatter(row["ratio_vs_fp32"], loss(row), s=40)
        below = "everything" in label  # beside LightToken points of about the same ratio
        ax.annotate(label, (row["ratio_vs_fp32"], loss(row)), fontsize=7, xytext=(-20, -12) if below else (4, 4),
                    textcoords="offset points")  # fmt: skip
    front = pareto_front(payload["rows"], "ratio_vs_fp32", "e2e_cosine_held_out")
    ax.plot([r["ratio_vs_fp32"] for r in front], [loss(r) for r in front], "k--", lw=0.8,
            label="Pareto front")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_yaxis()  # higher fidelity up
    ax.set_xlabel("whole-model ratio vs fp32 (every stored byte)")
    ax.set_ylabel("1 - end-to-end cosine, held-out text (log)")
    ax.set_title(f"all-MiniLM-L6-v2: whole-model size vs fidelity ({payload['date'][:10]})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="*", default=[25, 100])
    parser.add_argument("--sentences", type=int, default=1000, help="held-out sentences for the e2e cosine")
    parser.add_argument("--sts-limit", type=int, default=1000)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from transformers import AutoModel, AutoTokenizer

    import lighttoken_hf as lt
    from lighttoken_hf.compressor.backbone import calibration_batches, quantize_backbone
    from lighttoken_hf.compressor.report import model_parts_nbytes
    from lighttoken_hf.fidelity import mean_cosine, mean_pooled_embeddings, sts_spearman
    from lighttoken_hf.pretrained import default_model_path

    path = default_model_path()
    model = AutoModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = held_out(args.data_dir, args.sentences)
    sts = sts_sample(args.data_dir, args.sts_limit)
    reference = mean_pooled_embeddings(model, tokenizer, texts)
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    payload: dict[str, Any] = {
        "benchmark": "whole_model_minilm",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "texts": {"held_out": "CoLA dev sentences + RTE dev premises", "count": len(texts),
                  "sts": f"STS-B train, {len(sts[2])} seeded pairs"},  # fmt: skip
        "model_fp32_nbytes": fp32,
        "rows": [],
    }

    def score(method: str, candidate: Any, **extra: Any) -> None:
        parts = model_parts_nbytes(candidate)
        nbytes = sum(parts.values())
        embeddings = mean_pooled_embeddings(candidate, tokenizer, texts)
        row = {
            "method": method, "nbytes": nbytes, "ratio_vs_fp32": fp32 / nbytes, "ratio_vs_bf16": fp32 / 2 / nbytes,
            "parts": parts, "e2e_cosine_held_out": mean_cosine(reference, embeddings),
            "sts_spearman": sts_spearman(candidate, tokenizer, *sts), **extra,
        }  # fmt: skip
        payload["rows"].append(row)
        print(f"{method:<28} {nbytes / 1e6:7.2f} MB {row['ratio_vs_fp32']:6.2f}x  e2e {row['e2e_cosine_held_out']:.4f}"
              f"  STS {row['sts_spearman']:.4f}", flush=True)  # fmt: skip
        write_json(args.output, payload)

    score("original-fp32", model)
    score("torchao-int8-everything", int8_everything(model))
    calibration = calibration_batches(tokenizer)  # int4's rounding: as compress(..., quantize_backbone="int4")
    score("compressed-tensors-int4-everything", int4_everything(model, calibration))
    for ratio in args.ratios:
        start = time.perf_counter()
        compressed = lt.compress(model, lt.CompressionSettings(ratio=ratio), tokenizer=tokenizer, progress=False)
        seconds = time.perf_counter() - start
        score(f"lighttoken-{ratio:g}x-fp32-backbone", compressed.eval(), compress_seconds=seconds)
        for kind in ("int8", "int4"):
            score(f"lighttoken-{ratio:g}x-{kind}-backbone", quantize_backbone(compressed, kind, calibration).eval())
        del compressed
    plot(payload, args.output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
