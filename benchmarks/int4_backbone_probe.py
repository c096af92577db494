"""How much an int4 backbone costs a decoder LM, by rounding rule, grid and calibration text (the token matrix
untouched): each variant rounds every Linear weight of the original model but the output layer to int4 and
scores it against the original on held-out paragraphs (the last ``--texts`` unique SQuAD train contexts).

    python benchmarks/int4_backbone_probe.py --model gemma3 --texts 100

``--int8 REGEX``: each variant again with the Linears whose name matches REGEX rounded to int8 (mixed precision,
as llama.cpp's Q4_K_M gives some tensors more bits).

Variants (five), each at 4.5 bits per weight (groups of 32, fp16 scales): nearest level with the searched scale
per group (``pack_int4`` without calibration) or GPTQ with act_order (the default), calibrated on the library's
pseudo-sentences (wordfreq), on text the model wrote itself (``calibration.model_written_texts``, as
``compress`` samples it), on both (``compress``'s default for a causal LM), or on ``--calibration-texts``
real paragraphs (the first unique SQuAD train contexts, never the held-out ones, as
``compress(..., calibration_texts=...)`` takes them). Writes ``benchmarks/results/int4_backbone_<model>.json``
after every variant.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402
from lm_cli_benchmark import gguf_model_file, held_out_texts, squad_contexts  # noqa: E402

#: The variants, by their ``--variants`` name.
VARIANTS = ("nearest", "pseudo", "written", "both", "real")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3", help="gemma3, smollm2 or a .gguf file")
    parser.add_argument("--texts", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--calibration-texts", type=int, default=128, metavar="N")
    parser.add_argument("--self-written", type=int, default=None, metavar="N",
                        help="texts the model writes (default: as compress does, MODEL_WRITTEN_TEXTS)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="which variants to run (default: all)")
    parser.add_argument("--int8", nargs="+", default=[], metavar="REGEX",
                        help="for each REGEX, one more run of the variants with the Linears whose name matches it "
                             "rounded to int8 (nearest, one scale per output row) instead of int4")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from lighttoken_hf.compressor import backbone
    from lighttoken_hf.compressor.calibration import (
        MODEL_WRITTEN_TEXTS,
        MODEL_WRITTEN_TOKENS,
        model_written_texts,
    )
    from lighttoken_hf.compressor.lm_metrics import lm_fidelity
    from lighttoken_hf.gguf import load_gguf

    texts = held_out_texts(args.data_dir, args.texts)
    gguf_file = gguf_model_file(args.model)
    model, tokenizer = load_gguf(gguf_file)
    model.eval()
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"int4_backbone_{Path(args.model).stem}.json"
    head = model.get_output_embeddings()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    reference: list = []
    held = lm_fidelity(model, model, tokenizer, texts, max_length=args.max_length, batch_size=1,
                       reference=reference, prompt=None)  # fmt: skip
    payload: dict[str, Any] = {
        "benchmark": "int4_backbone_probe",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"name": args.model, "file": gguf_file.name, "quantized_linears": len(linears)},
        "texts": {"source": "SQuAD v1.1 train contexts (last unique ones)", "count": len(texts)},
        "perplexity_original": held["perplexity_original"],
        "rows": [],
    }
    default_calibration = backbone.calibration_batches(tokenizer)
    real_texts = squad_contexts(args.data_dir, args.calibration_texts)[: args.calibration_texts]
    if set(real_texts) & set(texts):
        raise SystemExit("--calibration-texts overlaps the held-out texts: lower it or --texts")
    payload["calibration_texts"] = {"source": "SQuAD v1.1 train contexts (first unique ones)", "count": len(real_texts)}

    def variant(label: str, calibration: list | None) -> None:
        for pattern in [None, *args.int8]:
            one_variant(label if pattern is None else f"{label}; int8 for /{pattern}/", calibration, pattern)

    def one_variant(label: str, calibration: list | None, int8: str | None) -> None:
        start = time.perf_counter()
        candidate = copy.deepcopy(model)
        hessians = backbone.input_hessians(model, calibration) if calibration is not None else None
        group, dtype = backbone.INT4_GROUP_SIZE, backbone.INT4_SCALE_DTYPE
        with torch.no_grad():
            for name in linears:
                weight = candidate.get_submodule(name).weight
                if int8 is not None and re.search(int8, name):
                    scale = weight.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
                    weight.copy_((weight.float() / scale).round().clamp(-127, 127) * scale)
                elif hessians is None:
                    groups = weight.float().reshape(weight.shape[0], -1, group)
                    scale = backbone._best_int4_scales(groups, dtype).unsqueeze(-1)
                    weight.copy_(((groups / scale).round().clamp(-8, 7) * scale).reshape(weight.shape))
                else:
                    weight.copy_(backbone._dequantize(*backbone.gptq_int4(weight, hessians[name])))
        result = lm_fidelity(model, candidate, tokenizer, texts, max_length=args.max_length, batch_size=1,
                             reference=reference, prompt=None)  # fmt: skip
        row = {"variant": label, "int8_linears": sum(bool(int8 and re.search(int8, n)) for n in linears),
               "perplexity": result["perplexity_compressed"],
               "perplexity_increase": result["perplexity_increase"],
               "next_token_kl": result["next_token_kl"], "top1_agreement": result["top1_agreement"],
               "seconds": time.perf_counter() - start}  # fmt: skip
        payload["rows"].append(row)
        write_json(output, payload)
        print(f"{label:<70} {row['perplexity']:8.2f} {row['perplexity_increase']:+.1%} KL {row['next_token_kl']:.3f}",
              flush=True)  # fmt: skip

    chosen = set(args.variants)
    if "nearest" in chosen:
        variant("nearest level, searched scale per group", None)
    if "pseudo" in chosen:
        variant("GPTQ, pseudo-sentences (an encoder's default)", default_calibration)
    if chosen & {"written", "both"}:
        written = model_written_texts(model, tokenizer, count=args.self_written or MODEL_WRITTEN_TEXTS, progress=True)
        payload["self_written"] = {"count": len(written), "tokens": MODEL_WRITTEN_TOKENS, "sample": written[0][:300]}
        self_written = backbone.calibration_batches(tokenizer, written)
        if "written" in chosen:
            variant("GPTQ, text the model wrote itself", self_written)
        if "both" in chosen:
            variant("GPTQ, self-written text and pseudo-sentences (a causal LM's default)",
                    self_written + default_calibration)  # fmt: skip
    if "real" in chosen:
        variant("GPTQ, real paragraphs", backbone.calibration_batches(tokenizer, real_texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
