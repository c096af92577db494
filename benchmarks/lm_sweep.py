"""Sweep LightToken options on a tied decoder LM (step 5) to choose its defaults by measurement.

    python benchmarks/lm_sweep.py --ratio 25 --preset lm
    python benchmarks/lm_sweep.py --ratio 25 --configs '{}' '{"frequency_power": 1.0}'

Each configuration compresses the model's tied token matrix (``compress(model, ratio=R, tokenizer=tok,
**options)``) and scores it against the original on *dev* paragraphs: the first ``--texts`` unique SQuAD
v1.1 train contexts, disjoint from the last 200 that ``lm_benchmark.py`` reports on (held out: no default
is chosen on them). Metrics: perplexity and its increase, next-token KL, top-1 agreement.

A config may hold ``"calibration": "generated"``: the LM metric is then measured on text the original
model wrote itself (:func:`generated_texts`, options under ``"generation"``; the data-free calibration of
LLM-QAT) instead of the default wordfreq pseudo-sentences.
Writes ``benchmarks/results/lm_sweep_<model>_<ratio>x.json`` after every config.
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
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402
from lm_cli_benchmark import gguf_model_file, squad_contexts  # noqa: E402

PRESETS: dict[str, list[dict[str, Any]]] = {
    "lm": [
        {},
        {"calibration": "generated"},
        {"frequency_power": 1.0},
        {"frequency_power": 0.25},
        {"sensitivity_shrinkage": 0.1},
        {"sensitivity_shrinkage": 0.5},
        {"frequency_share": 0.4},
        {"tier_decay": 0.5},
    ],
}


def dev_texts(data_dir: Path, count: int) -> list[str]:
    """The first ``count`` unique SQuAD v1.1 train contexts (lm_benchmark.py holds out the last ones)."""
    return squad_contexts(data_dir, count)[:count]


def generated_texts(
    model: Any,
    tokenizer: Any,
    num_texts: int = 64,
    *,
    max_new_tokens: int = 128,
    prompt_words: int = 3,
    temperature: float = 0.8,
    top_p: float = 0.95,
    batch_size: int = 16,
    seed: int = 0,
) -> list[str]:
    """``num_texts`` nucleus-sampled continuations by ``model`` of ``prompt_words`` wordfreq-drawn words."""
    import torch

    from lighttoken_hf.compressor.frequencies import general_text_samples

    prompts = [" ".join(t.split()[:prompt_words]) for t in general_text_samples(num_texts, seed=seed)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts: list[str] = []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, num_texts, batch_size):
                batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                     top_p=top_p, top_k=0, pad_token_id=pad)  # fmt: skip
                texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, gemma3 or a .gguf file")
    parser.add_argument("--ratio", type=float, default=25.0)
    parser.add_argument("--configs", nargs="*", default=None, help="JSON dicts of compress() options")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="lm")
    parser.add_argument("--texts", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    import lighttoken_hf as lt
    from lighttoken_hf.compressor.lm_metrics import lm_fidelity
    from lighttoken_hf.gguf import load_gguf

    configs = [json.loads(c) for c in args.configs] if args.configs else PRESETS[args.preset]
    texts = dev_texts(args.data_dir, args.texts)
    gguf_file = gguf_model_file(args.model)
    model, tokenizer = load_gguf(gguf_file)
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"lm_sweep_{args.model}_{args.ratio:g}x.json"
    payload: dict[str, Any] = {
        "benchmark": "lm_sweep",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "model": {"name": args.model, "file": gguf_file.name},
        "ratio": args.ratio,
        "texts": {"source": "SQuAD v1.1 train contexts (first unique ones: dev)", "count": len(texts),
                  "max_length": args.max_length},  # fmt: skip
        "records": [],
    }
    reference: list = []
    for config in configs:
        options = dict(config)
        extra: dict[str, Any] = {}
        start = time.perf_counter()
        if options.pop("calibration", None) == "generated":
            options["calibration_texts"] = generated_texts(model, tokenizer, **options.pop("generation", {}))
            extra["generation_seconds"] = time.perf_counter() - start
        compressed = lt.compress(model, ratio=args.ratio, tokenizer=tokenizer, progress=False, **options)
        seconds = time.perf_counter() - start
        fidelity = lm_fidelity(model, compressed, tokenizer, texts, max_length=args.max_length, reference=reference)
        report = compressed.compression_report
        record = {
            "options": config,
            "ratio": report.ratio,
            "rel_error": report.fidelity.get("rel_error"),
            "compress_seconds": seconds,
            **extra,
            **{k: fidelity[k] for k in ("perplexity_original", "perplexity_compressed", "perplexity_increase",
                                        "next_token_kl", "top1_agreement", "sample_compressed")},  # fmt: skip
            "plan": {k: report.plan[k] for k in ("svd_rank", "stage_bits", "stage_rows")},
        }
        payload["records"].append(record)
        write_json(output, payload)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
