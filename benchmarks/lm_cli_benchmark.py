"""Decoder LMs through the command line: ``lighttoken compress MODEL --ratio R`` on a real GGUF model, scored.

    python benchmarks/lm_cli_benchmark.py --model smollm2 --ratios 8 25
    python benchmarks/lm_cli_benchmark.py --model gemma3 --ratios 8 --batch-size 1

For each ratio the CLI compresses the model in a child process (its wall time and peak resident memory are
recorded); the saved checkpoint is then loaded like any user would (``AutoModelForCausalLM``) and compared
with the original (the GGUF file dequantized to float) on held-out real paragraphs: the last ``--texts``
unique SQuAD v1.1 train contexts of ``--data-dir`` (Wikipedia; no default was chosen on them), each up to
``--max-length`` tokens. Reported: perplexity of both and its relative increase, next-token KL, top-1
agreement, greedy-generation tokens/s of both, and the CLI's own report (on general text). Writes
``benchmarks/results/<output-name>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402

#: Runs the CLI in a child process and reports the child's own peak resident memory (bytes) on exit.
_RUNNER = """
import sys
from lighttoken_hf.compressor.resources import PeakResidentMemory
from lighttoken_hf_cli import main
sys.argv = ["lighttoken", *sys.argv[1:]]
with PeakResidentMemory() as memory:  # this process's own peak, not its parent's (ru_maxrss)
    code = main()
print("PEAK_RSS", memory.peak, file=sys.stderr)
sys.exit(code)
"""


def squad_contexts(data_dir: Path, count: int) -> list[str]:
    """All unique SQuAD train contexts (real Wikipedia paragraphs), in order; at least ``count`` of them."""
    import pyarrow.parquet as pq

    files = sorted((data_dir / "squad").glob("*.parquet"))
    if not files:
        raise SystemExit(f"no SQuAD parquet under {data_dir}/squad: pass --data-dir")
    contexts = list(dict.fromkeys(pq.read_table(files[0], columns=["context"]).column("context").to_pylist()))
    if len(contexts) < count:
        raise SystemExit(f"{files[0]} has {len(contexts)} unique contexts, fewer than --texts {count}")
    return contexts


def gguf_model_file(model: str) -> Path:
    """The GGUF file of a ``--model`` argument: ``smollm2`` or ``gemma3`` (the packaged models), or a path."""
    from lighttoken_hf import pretrained

    path = {"smollm2": pretrained.smollm2_gguf_path, "gemma3": pretrained.gemma3_gguf_path}.get(model)
    return path() if path else Path(model)


def held_out_texts(data_dir: Path, count: int) -> list[str]:
    """The last ``count`` unique SQuAD train contexts (no default was chosen on them)."""
    return squad_contexts(data_dir, count)[-count:]


def compress_with_cli(model: str, ratio: float, out: Path, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", _RUNNER, "compress", model, "--ratio", f"{ratio:g}", "--out", str(out),
           "--json", "--no-progress", *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lighttoken compress failed ({done.returncode}):\n{done.stderr[-4000:]}")
    peak = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS"))
    return {"command": " ".join(["lighttoken", *cmd[3:]]), "seconds": seconds, "peak_rss_bytes": peak,
            "report": json.loads(done.stdout)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, gemma3 or a .gguf file")
    parser.add_argument("--ratios", type=float, nargs="+", default=[8, 25])
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output-name", default=None)
    parser.add_argument("--cli-args", nargs=argparse.REMAINDER, default=[], help="more `compress` options")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    import lighttoken_hf  # noqa: F401 - registers the LightToken classes
    from lighttoken_hf.compressor.lm_metrics import generation_speed, lm_fidelity
    from lighttoken_hf.gguf import load_gguf

    texts = held_out_texts(args.data_dir, args.texts)
    gguf_file = gguf_model_file(args.model)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    runs = []
    original = tokenizer = None
    reference: list = []
    for ratio in args.ratios:
        with tempfile.TemporaryDirectory(prefix="lighttoken-lm-bench-") as tmp:
            out = Path(tmp) / "ckpt"
            run = compress_with_cli(args.model, ratio, out, args.cli_args)
            print(f"{ratio:g}x: compressed in {run['seconds']:.0f} s, peak RSS {run['peak_rss_bytes'] / 2**30:.2f} GiB",
                  flush=True)  # fmt: skip
            if original is None:
                original, tokenizer = load_gguf(gguf_file)
                original_speed = generation_speed(original, tokenizer)
            compressed = AutoModelForCausalLM.from_pretrained(out).eval()
            start = time.perf_counter()
            with torch.no_grad():
                run["held_out"] = lm_fidelity(
                    original, compressed, tokenizer, texts, max_length=args.max_length,
                    batch_size=args.batch_size, reference=reference,
                )  # fmt: skip
            run["held_out_seconds"] = time.perf_counter() - start
            run["tokens_per_second"] = generation_speed(compressed, tokenizer)
            run["ratio"] = run["report"]["ratio"]
            held = run["held_out"]
            print(f"{ratio:g}x: perplexity {held['perplexity_original']:.2f} -> {held['perplexity_compressed']:.2f} "
                  f"({held['perplexity_increase']:+.1%}), KL {held['next_token_kl']:.3f}, top-1 "
                  f"{held['top1_agreement']:.3f}", flush=True)  # fmt: skip
            runs.append({"target_ratio": ratio, **run})
            del compressed
    payload = {
        "benchmark": "lm_cli",
        "date": started,
        "machine": machine_info(),
        "git": git_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"name": args.model, "file": gguf_file.name},
        "texts": {"source": "SQuAD v1.1 train contexts (last unique ones)", "count": len(texts),
                  "max_length": args.max_length},  # fmt: skip
        "original_tokens_per_second": original_speed,
        "runs": runs,
    }
    name = args.output_name or f"lm_cli_{args.model}"
    write_json(REPO_ROOT / "benchmarks" / "results" / f"{name}.json", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
