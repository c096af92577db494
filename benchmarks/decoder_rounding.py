"""What storing the decoders in int8 costs by itself, apart from the bytes it frees.

Compresses all-MiniLM-L6-v2 with fp16 decoders (``decoder_dtype="float16"``, the layout before int8
decoders), then stores the *same* codes, factors and decoders in an int8-decoder module
(``LightTokenEmbedding.set_decoder`` rounds each decoder row to int8 with its own scale) and measures
both, so the only difference is the rounding. The int8 default then spends the bytes it frees on more
code bits; that gain is measured by the fidelity benchmark (README).

Usage (from the repo root, with ``../shared/data`` present or ``--data-dir``)::

    python benchmarks/decoder_rounding.py --ratios 25 100

Writes ``benchmarks/results/decoder_rounding.json`` (machine, date, commit, one record per ratio).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import lighttoken_hf as lt  # noqa: E402
from lighttoken_hf.compressor.metrics import matrix_fidelity, sentence_embedding_cosine  # noqa: E402
from lighttoken_hf.fidelity import load_sentences_from_parquet  # noqa: E402
from lighttoken_hf.pretrained import default_model_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import git_info, machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def as_int8_decoders(emb: lt.LightTokenEmbedding) -> lt.LightTokenEmbedding:
    """The same stored values with every decoder weight rounded to int8 (one scale per code bit)."""
    out = lt.LightTokenEmbedding(
        emb.num_embeddings,
        emb.embedding_dim,
        svd_rank=emb.svd_rank,
        stage_bits=emb.stage_bits,
        stage_rows=emb.stage_rows,
        padding_idx=emb.padding_idx,
        factor_dtype=emb.lowrank_left.dtype,
        row_index=emb.row_index,
        decoder_dtype=torch.int8,
    )
    state = {k: v for k, v in emb.state_dict().items() if "decoder_" not in k}
    out.load_state_dict(state, strict=False)
    for s in range(len(emb.stage_bits)):
        out.set_decoder(s, emb.decoder_weight(s), getattr(emb, f"decoder_{s}_bias"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[25.0, 100.0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "decoder_rounding.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    glue = Path(args.data_dir) / "glue"
    if not glue.is_dir():
        print(f"error: no GLUE data under {glue}; pass --data-dir", file=sys.stderr)
        return 2
    texts = {  # the fidelity benchmark's two text sets
        "sst2_dev": load_sentences_from_parquet(glue / "SST-2" / "dev.parquet", limit=500),
        "held_out": load_sentences_from_parquet(glue / "CoLA" / "dev.parquet")
        + load_sentences_from_parquet(glue / "RTE" / "dev.parquet", column="sentence1"),
    }
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    dense = model.get_input_embeddings().weight.detach().float()
    records = []
    for ratio in args.ratios:
        fp16 = lt.compress(model, ratio=ratio, tokenizer=tokenizer, progress=False, decoder_dtype="float16")
        emb = fp16.get_input_embeddings()
        record: dict = {"target_ratio": ratio}
        for name, module in (("fp16_decoders", emb), ("same_values_int8_decoders", as_int8_decoders(emb))):
            fp16.set_input_embeddings(module)
            with torch.no_grad():
                fidelity = matrix_fidelity(dense, module.weight, seed=0)
            record[name] = {
                "ratio": module.compression_ratio,
                "rel_error": fidelity["rel_error"],
                **{
                    f"e2e_{k}": sentence_embedding_cosine(model, fp16, tokenizer, v) for k, v in texts.items()
                },
            }
        records.append(record)
        print(json.dumps(record), flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **git_info(),
        "machine": machine_info(),
        "threads": args.threads,
        "texts": {k: len(v) for k, v in texts.items()},
    }
    out.write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
