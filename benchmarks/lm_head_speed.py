"""Speed of the tied LM head computed from the packed codes against a dense output layer (logits per call).

    python benchmarks/lm_head_speed.py            # SmolLM2-135M and Gemma-3-270M shapes, 8x and 25x plans

A LightTokenEmbedding with the planner's layout for each shape and ratio is filled with random codes (the
speed does not depend on their values). Its LightTokenLMHead scores 1 position (a generation step, through
code-byte tables and through row blocks) and 256 positions (a prompt or a perplexity batch; row blocks,
since tables serve at most 8 positions). The dense head is ``hidden @ E.T`` with the fp32 matrix. Median
of ``--repeats`` calls after a warm-up, on ``--threads`` threads. Writes
``benchmarks/results/lm_head_speed.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402

SHAPES = {"smollm2": (49_152, 576), "gemma3": (262_144, 640)}


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--ratios", type=float, nargs="+", default=[8, 25])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from lighttoken_hf.compressor.planner import plan_for_ratio
    from lighttoken_hf.core.lighttoken_codec import LightTokenEmbedding, pack_bits
    from lighttoken_hf.core.modeling_lighttoken import LightTokenLMHead

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        vocab, dim = SHAPES[name]
        dense = torch.randn(vocab, dim)
        for ratio in args.ratios:
            plan = plan_for_ratio(vocab, dim, ratio)
            emb = LightTokenEmbedding(
                vocab, dim, svd_rank=plan.svd_rank, stage_bits=list(plan.stage_bits),
                stage_rows=list(plan.stage_rows), decoder_dtype=torch.int8,
            )  # fmt: skip
            for key, buf in emb.named_buffers():
                if key.startswith("codes_"):
                    buf.random_(0, 256)
                elif key.startswith("coverage_"):  # a random set of exactly the stage's row count
                    covered = torch.zeros(1, vocab, dtype=torch.bool)
                    covered[0, torch.randperm(vocab)[: emb.stage_rows[int(key.split("_")[1])]]] = True
                    buf.copy_(pack_bits(covered)[0])
            head = LightTokenLMHead(emb)
            for positions in (1, 256):
                hidden = torch.randn(1, positions, dim)
                with torch.no_grad():
                    head.lut_positions = 10**9  # tables only where the head uses them (a few positions)
                    table = _median_ms(lambda: head(hidden), args.repeats) if positions <= 8 else None  # noqa: B023
                    head.lut_positions = 0
                    block = _median_ms(lambda: head(hidden), args.repeats)  # noqa: B023
                    dense_ms = _median_ms(lambda: hidden @ dense.T, args.repeats)  # noqa: B023
                row = {"model": name, "vocab": vocab, "dim": dim, "ratio": ratio, "stage_bits": list(plan.stage_bits),
                       "positions": positions, "table_ms": table, "block_ms": block, "dense_ms": dense_ms}  # fmt: skip
                rows.append(row)
                shown = f"{table:.1f} ms" if table is not None else "not used"
                print(f"{name} {ratio:g}x, {positions} position(s): tables {shown}, blocks {block:.1f} ms, "
                      f"dense {dense_ms:.1f} ms", flush=True)  # fmt: skip
    write_json(
        REPO_ROOT / "benchmarks" / "results" / "lm_head_speed.json",
        {"benchmark": "lm_head_speed", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
         "machine": machine_info(), "git": git_info(), "args": vars(args), "rows": rows},  # fmt: skip
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
