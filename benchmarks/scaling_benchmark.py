"""How compression time and memory grow with the matrix (V x d) and the ratio, idle and under load.

    python benchmarks/scaling_benchmark.py                                  # every matrix at 8x, 25x, 100x
    python benchmarks/scaling_benchmark.py --matrices minilm --ratios 25 --background-load 2 --output-name scaling_load

Each measurement runs ``compress_matrix`` in a fresh child process: the matrix (and its general-text token
frequencies, as the CLI uses them) is loaded, a 2,000-row matrix is compressed once to warm up (thread pools,
lazy imports), then the resident size is read and the real matrix compressed; recorded are the wall time,
the peak resident growth over that baseline (``PeakResidentMemory``: the kernel's high-water mark, reset
before the run; also as a multiple of the fp32 matrix), the real ratio and the relative error. Matrices:
``minilm`` (all-MiniLM-L6-v2, bundled), ``smollm2`` and
``gemma3`` (GGUF packages, see the README; their matrices are cached under ``--cache-dir`` after the first
load), and ``synthetic:VxD`` (Gaussian rows shaped by a power-law spectrum, Zipf frequencies).
``--background-load N`` keeps N busy-looping processes running during every measurement. A least-squares
fit of log(time) and log(memory) on log(V*d) per ratio gives the cost model, extrapolated to a
128,256 x 4,096 (Llama-3-8B-class) matrix. Writes ``benchmarks/results/<output-name>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402

#: The matrix the cost model is extrapolated to (a Llama-3-8B-class vocabulary).
EXTRAPOLATE_TO = (128_256, 4_096)


def load_matrix(name: str, cache_dir: Path) -> tuple[Any, Any]:
    """The fp32 matrix called ``name`` and its token frequencies (``None`` for none)."""
    import torch
    from safetensors.torch import load_file, save_file

    if name.startswith("synthetic:"):
        v, d = (int(x) for x in name.split(":", 1)[1].lower().split("x"))
        g = torch.Generator().manual_seed(0)
        spectrum = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
        matrix = torch.randn(v, d, generator=g) * spectrum
        frequencies = 1.0 / torch.arange(1, v + 1, dtype=torch.float64)[torch.randperm(v, generator=g)]
        return matrix, frequencies
    cached = cache_dir / f"{name}.safetensors"
    if cached.is_file():
        tensors = load_file(cached)
        # copies in ordinary memory: the loaded tensors may be pages of the file, read in (and counted as
        # the compressor's growth) only when the compression first touches them
        return tensors["matrix"].clone(), tensors["frequencies"].clone()
    from lighttoken_hf.compressor.frequencies import general_text_frequencies

    if name == "minilm":
        from transformers import AutoModel, AutoTokenizer

        from lighttoken_hf.pretrained import default_model_path

        path = default_model_path()
        model, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    elif name in ("smollm2", "gemma3"):
        from lighttoken_hf import pretrained
        from lighttoken_hf.gguf import load_gguf

        model, tokenizer = load_gguf(getattr(pretrained, f"{name}_gguf_path")())
    else:
        raise SystemExit(f"unknown matrix {name!r}: minilm, smollm2, gemma3 or synthetic:VxD")
    matrix = model.get_input_embeddings().weight.detach().float().contiguous()
    frequencies = general_text_frequencies(tokenizer, matrix.shape[0])
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({"matrix": matrix, "frequencies": frequencies}, str(cached))
    return matrix, frequencies


def child(name: str, ratio: float, cache_dir: Path, device: str, threads: int | None) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch

    from lighttoken_hf.compressor.pipeline import compress_matrix
    from lighttoken_hf.compressor.resources import PeakResidentMemory
    from lighttoken_hf.compressor.settings import CompressionSettings

    matrix, frequencies = load_matrix(name, cache_dir)
    settings = CompressionSettings(ratio=ratio, device=device, threads=threads)
    warm = torch.Generator().manual_seed(1)
    compress_matrix(torch.randn(2000, matrix.shape[1], generator=warm), settings, progress=False)
    start = time.perf_counter()
    with PeakResidentMemory() as memory:
        _, report = compress_matrix(
            matrix, settings, frequencies=frequencies, progress=False, frequency_source="wordfreq"
        )
    seconds = time.perf_counter() - start
    growth = memory.growth
    matrix_bytes = matrix.numel() * 4
    return {
        "matrix": name,
        "rows": matrix.shape[0],
        "dim": matrix.shape[1],
        "ratio_target": ratio,
        "real_ratio": report.ratio,
        "rel_error": report.fidelity["rel_error"],
        "seconds": seconds,
        "peak_rss_growth_bytes": growth,
        "peak_rss_growth_x_matrix": growth / matrix_bytes,
        "matrix_bytes": matrix_bytes,
        "threads": report.timings.get("threads", torch.get_num_threads()),
        "device": str(settings.device),
        "stage_bits": report.plan["stage_bits"],
        "joint_rounds": report.joint.get("iterations"),
        "step_seconds": report.timings,
    }


def fit_cost_model(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ratio: ``seconds = a * (V*d)^b`` and ``growth = c * (V*d)^e`` by least squares in log space."""
    import numpy as np

    models = {}
    for ratio in sorted({r["ratio_target"] for r in runs}):
        points = [r for r in runs if r["ratio_target"] == ratio]
        if len({r["rows"] * r["dim"] for r in points}) < 2:
            continue
        size = np.log([r["rows"] * r["dim"] for r in points])
        model: dict[str, Any] = {"points": len(points)}
        for key, value in (("seconds", "seconds"), ("memory", "peak_rss_growth_bytes")):
            slope, intercept = np.polyfit(size, np.log([max(r[value], 1.0) for r in points]), 1)
            model[f"{key}_exponent"] = float(slope)
            model[f"{key}_coefficient"] = float(math.exp(intercept))
            model[f"{key}_at_{EXTRAPOLATE_TO[0]}x{EXTRAPOLATE_TO[1]}"] = float(
                math.exp(intercept) * (EXTRAPOLATE_TO[0] * EXTRAPOLATE_TO[1]) ** slope
            )
        models[f"{ratio:g}x"] = model
    return models


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ratio in sorted({r["ratio_target"] for r in runs}):
        points = sorted((r for r in runs if r["ratio_target"] == ratio), key=lambda r: r["rows"] * r["dim"])
        sizes = [r["rows"] * r["dim"] for r in points]
        axes[0].plot(sizes, [r["seconds"] for r in points], "o-", label=f"{ratio:g}x")
        axes[1].plot(sizes, [r["peak_rss_growth_bytes"] / 2**20 for r in points], "o-", label=f"{ratio:g}x")
    sizes = sorted({r["rows"] * r["dim"] for r in runs})
    axes[1].plot(sizes, [3 * 4 * s / 2**20 for s in sizes], "k--", label="3x the fp32 matrix")
    for ax, label in zip(axes, ("compression time (s)", "peak memory growth (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("matrix size V x d")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrices", default="minilm,smollm2,gemma3")
    parser.add_argument("--ratios", default="8,25,100")
    parser.add_argument("--background-load", type=int, default=0, help="busy-looping processes kept running")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="fixed torch threads (default: fit to idle cores)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "lighttoken-hf" / "bench")
    parser.add_argument("--output-name", default="scaling")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--append", action="store_true",
                        help="keep the output file's runs; a matrix and ratio measured again replace the earlier run")
    parser.add_argument("--child", nargs=2, metavar=("MATRIX", "RATIO"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child[0], float(args.child[1]), args.cache_dir, args.device, args.threads)
        print("RESULT " + json.dumps(result))
        return
    out = REPO_ROOT / "benchmarks" / "results" / f"{args.output_name}.json"
    payload: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": machine_info(),
        "git": git_info(),
        "background_load": args.background_load,
        "device": args.device,
        "threads": args.threads or "fitted to the idle cores",
        "runs": [],
        "failed": [],
    }
    if args.append and out.is_file():
        earlier = json.loads(out.read_text(encoding="utf-8"))
        again = {(m, float(r)) for m in args.matrices.split(",") for r in args.ratios.split(",")}
        for run in earlier.get("runs", []):  # runs of an earlier commit keep that commit's id
            run.setdefault("git_commit", (earlier.get("git") or {}).get("commit"))
        payload["runs"] = [r for r in earlier.get("runs", []) if (r["matrix"], r["ratio_target"]) not in again]
        payload["failed"] = earlier.get("failed", [])
        payload["earlier_runs"] = [*earlier.get("earlier_runs", []), {k: earlier.get(k) for k in ("date", "git")}]
    for name in args.matrices.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            load = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.background_load)
            ]
            try:
                cmd = [sys.executable, __file__, "--child", name, f"{ratio:g}", "--cache-dir", str(args.cache_dir),
                       "--device", args.device]  # fmt: skip
                cmd += ["--threads", str(args.threads)] if args.threads else []
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                done = None
            finally:
                for process in load:
                    process.kill()
                    process.wait()
            lines = [line for line in (done.stdout if done else "").splitlines() if line.startswith("RESULT ")]
            if not lines:
                reason = "timeout" if done is None else done.stderr[-2000:]
                payload["failed"].append({"matrix": name, "ratio_target": ratio, "reason": reason})
                print(f"{name} {ratio:g}x failed: {reason}", file=sys.stderr)
                continue
            run = json.loads(lines[-1][len("RESULT ") :])
            run["git_commit"] = payload["git"].get("commit")
            payload["runs"].append(run)
            print(
                f"{name} ({run['rows']} x {run['dim']}) {ratio:g}x: {run['seconds']:.1f} s, "
                f"memory +{run['peak_rss_growth_x_matrix']:.2f}x the matrix, rel error {run['rel_error']:.4f}",
                flush=True,
            )
            payload["cost_model"] = fit_cost_model(payload["runs"])
            write_json(out, payload)
    if len({(r["rows"], r["dim"]) for r in payload["runs"]}) > 1:  # a plot needs more than one size
        load_text = f", {args.background_load} busy processes beside it" if args.background_load else ", idle"
        plot(payload["runs"], out.with_suffix(".png"), f"LightToken compression cost ({args.device}{load_text})")
    write_json(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
