"""What verifying a checkpoint's checksums costs at load time, by matrix size and ratio.

    python benchmarks/checksum_benchmark.py

``from_pretrained`` recomputes a short SHA-256 of every compressed tensor (``LightTokenEmbedding.checksums``)
and compares it with the one ``config.json`` recorded at save time. This times that computation on
modules with the planner's layout for all-MiniLM-L6-v2 (30,522 x 384), SmolLM2-135M (49,152 x 576) and
Gemma-3-270M (262,144 x 640) at 8x, 25x and 100x (random stored values: hashing time does not depend on
them), and, for scale, the time to load the same tensors from a safetensors file just written and copy
each once (the file is in the page cache, so that is a lower bound of a real load from disk).
Writes ``benchmarks/results/checksum.json``.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402

MATRICES = {"minilm": (30_522, 384), "smollm2": (49_152, 576), "gemma3": (262_144, 640)}
RATIOS = (8, 25, 100)


def module_for(rows: int, dim: int, ratio: float) -> Any:
    """A LightTokenEmbedding with the planner's default layout at ``ratio``, filled with random bytes."""
    import torch

    from lighttoken_hf import LightTokenEmbedding
    from lighttoken_hf.compressor.planner import plan_for_ratio

    plan = plan_for_ratio(rows, dim, ratio, int8_decoders=True)
    module = LightTokenEmbedding(
        rows, dim, svd_rank=plan.svd_rank, stage_bits=plan.stage_bits, stage_rows=plan.stage_rows,
        decoder_dtype=torch.int8,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            raw = tensor.view(-1).view(torch.uint8) if tensor.numel() else tensor
            raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=generator))
    return module


def best_of(fn: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    from safetensors.torch import load_file, save_file

    rows_out = []
    for name, (rows, dim) in MATRICES.items():
        for ratio in RATIOS:
            module = module_for(rows, dim, ratio)
            state = {k: v.contiguous() for k, v in module.state_dict().items()}
            nbytes = sum(t.numel() * t.element_size() for t in state.values())
            with tempfile.TemporaryDirectory() as folder:
                path = str(Path(folder) / "weights.safetensors")
                save_file(state, path)
                read = best_of(lambda path=path: [t.clone() for t in load_file(path).values()])
            seconds = best_of(module.checksums)
            rows_out.append({
                "matrix": name, "rows": rows, "dim": dim, "ratio": ratio, "stored_bytes": nbytes,
                "checksum_seconds": seconds, "load_and_copy_seconds": read,
                "checksum_mb_per_s": nbytes / seconds / 1e6,
            })  # fmt: skip
            print(f"{name:<8} {ratio:>4}x  {nbytes / 1e6:8.2f} MB  checksums {seconds * 1000:8.1f} ms  "
                  f"load+copy {read * 1000:8.1f} ms", flush=True)  # fmt: skip
    write_json(
        REPO_ROOT / "benchmarks" / "results" / "checksum.json",
        {
            "benchmark": "checksum_benchmark",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "git": git_info(),
            "rows": rows_out,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
