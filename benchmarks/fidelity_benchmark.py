#!/usr/bin/env python
"""Side-by-side fidelity benchmark: LightToken vs. practical baselines on one real model's embedding matrix.

Usage (from the repository root)::

    python benchmarks/fidelity_benchmark.py --model minilm                 # full run
    python benchmarks/fidelity_benchmark.py --model minilm --quick         # smoke test
    python benchmarks/fidelity_benchmark.py --model mpnet --methods svd pq lighttoken
    python benchmarks/fidelity_benchmark.py --model /path/to/hf/model --ratios 25 50

Every compression runs in a fresh child process (multiprocessing "spawn") so that its wall time and peak
memory are measured in isolation; everything else (fidelity, end-to-end metrics, timings) runs in the
parent. Results go to ``benchmarks/results/fidelity_<model>{_quick}.{json,md,png}``. See
``benchmarks/README.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fnmatch
import gc
import importlib
import inspect
import json
import multiprocessing as mp
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _path in (str(REPO_ROOT), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_io import clean_json, fmt, git_info, machine_info  # noqa: E402

DEFAULT_RATIOS = [8.0, 16.0, 25.0, 50.0, 100.0]
QUICK_RATIOS = [25.0, 100.0]
LIGHTTOKEN_VARIANTS: dict[str, dict[str, Any]] = {
    "lighttoken-default": {},
    "lighttoken-svd-only": {"num_stages": 0},
    "lighttoken-1stage": {"num_stages": 1},
    "lighttoken-cosine-bound": {"loss": "cosine_bound"},
    "lighttoken-no-freq": {"frequency_aware": False},
    "lighttoken-no-sensitivity": {"sensitivity_weighted": False},
    "lighttoken-no-joint": {"joint_iterations": 0},
    "lighttoken-fp16-decoders": {"decoder_dtype": "float16"},
}
QUANT_BITS = (8, 4, 2)
LOOKUP_SHAPE = (32, 128)
FORWARD_SHAPE = (32, 128)


def own_module(name: str):
    """``lighttoken_hf.<name>`` (fidelity, pretrained), imported when a job needs it (not at start-up)."""
    return importlib.import_module(f"lighttoken_hf.{name}")


# ------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    """One (method, target ratio) cell of the benchmark."""

    method: str  # e.g. "svd-fp16", "int4-g32", "pq", "lighttoken-no-freq"
    family: str  # "svd", "quant", "pq" or "lighttoken"
    kind: str  # "baseline" or "lighttoken"
    target_ratio: float | None  # None: the method's natural ratio (scalar quantization)
    params: dict[str, Any] = field(default_factory=dict)
    unreachable: str | None = None

    @property
    def label(self) -> str:
        target = "natural" if self.target_ratio is None else f"{self.target_ratio:g}x"
        return f"{self.method}@{target}"

    def tags(self) -> set[str]:
        tags = {self.method, self.family, self.kind, self.kind + "s", "all"}
        if self.family == "quant":
            tags.add(self.method.split("-")[0])  # int8 / int4 / int2
        if self.family == "svd":
            tags.add("svd-fp16")
        return tags


def build_jobs(vocab: int, dim: int, ratios: list[float], group_sizes: list[int]) -> list[Job]:
    """Every (method, ratio) cell, with unreachable ratios marked rather than silently dropped."""
    from baselines import pq_config_for_ratio, quant_nbytes, svd_rank_for_ratio

    jobs: list[Job] = []
    for bits in QUANT_BITS:
        for group in [None, *group_sizes]:
            if group is not None and (group >= dim or dim % group):
                continue
            name = f"int{bits}-" + ("row" if group is None else f"g{group}")
            natural = vocab * dim * 4 / quant_nbytes(vocab, dim, bits, group)
            jobs.append(
                Job(name, "quant", "baseline", None, {"bits": bits, "group_size": group, "natural": natural})
            )
    for ratio in ratios:
        rank = svd_rank_for_ratio(vocab, dim, ratio)
        jobs.append(
            Job(
                "svd-fp16",
                "svd",
                "baseline",
                ratio,
                {"rank": rank},
                None if rank >= 1 else f"even rank 1 is below {ratio:g}x",
            )
        )
        config = pq_config_for_ratio(vocab, dim, ratio)
        jobs.append(
            Job(
                "pq",
                "pq",
                "baseline",
                ratio,
                {} if config is None else {"m": config[0], "nbits": config[1]},
                None if config is not None else f"no (M, nbits<=8) with M | {dim} reaches {ratio:g}x",
            )
        )
        for name, options in LIGHTTOKEN_VARIANTS.items():
            jobs.append(Job(name, "lighttoken", "lighttoken", ratio, dict(options)))
    return jobs


def select_jobs(jobs: list[Job], patterns: list[str] | None) -> list[Job]:
    """Keep jobs whose method, family or kind matches one of ``patterns`` (names or shell-style globs)."""
    if not patterns:
        return jobs
    keep = []
    for job in jobs:
        tags = job.tags()
        if any(p in tags or fnmatch.fnmatchcase(job.method, p) for p in patterns):
            keep.append(job)
    return keep


# ------------------------------------------------------------------------------------ memory
def _proc_status_kb(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


class PeakRSS:
    """Peak resident-memory growth of this process over a ``with`` block.

    Preferred method (Linux >= 4.0): write ``5`` to ``/proc/self/clear_refs``, which resets the kernel's
    high-water mark ``VmHWM`` to the current RSS, then read ``VmHWM`` at the end; the result is
    ``VmHWM - RSS at entry``, exact to the page and with no sampling gaps. Fallback: a thread samples
    ``psutil`` RSS every millisecond (may miss short spikes). ``method`` says which was used.
    """

    def __init__(self) -> None:
        self.method = ""
        self.start_bytes = 0
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            rss, hwm = _proc_status_kb("VmRSS"), _proc_status_kb("VmHWM")
            if rss is None or hwm is None or hwm > rss + 1024:
                raise OSError("VmHWM reset not honoured")
            self.method = "VmHWM high-water mark reset via /proc/self/clear_refs"
            self.start_bytes = rss * 1024
        except OSError:
            import psutil

            process = psutil.Process()
            self.method = "psutil RSS sampled every 1 ms"
            self.start_bytes = self.peak_bytes = process.memory_info().rss

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            import psutil

            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)
        else:
            self.peak_bytes = (_proc_status_kb("VmHWM") or 0) * 1024

    @property
    def growth_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)


# ------------------------------------------------------------------------------------ compression (child)
def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(Exception):
        import faiss

        faiss.omp_set_num_threads(threads)


def _classify_error(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return "not_implemented"
    if isinstance(exc, ImportError):
        return "import"
    return "exception"


def compress_worker(
    job: dict[str, Any], e_path: str, model_path: str, out_path: str, threads: int, seed: int
) -> None:
    """Run one compression and save what the parent needs to ``out_path`` (a torch pickle).

    Everything that is not the compression itself (imports, loading E and the tokenizer) happens before
    the memory baseline is taken.
    """
    _set_threads(threads)
    result: dict[str, Any] = {"ok": False}
    try:
        e = torch.load(e_path, weights_only=True)
        if job["kind"] == "lighttoken":
            stage = "import"
            try:
                from transformers import AutoModel, AutoTokenizer

                from lighttoken_hf import compress

                tokenizer = AutoTokenizer.from_pretrained(model_path)
                # the model itself is compressed (in place, no copy), as users do: its sensitivity
                # metric is part of the method and of the measured time
                model = AutoModel.from_pretrained(model_path).eval()
                if not torch.equal(model.get_input_embeddings().weight.detach().float(), e):
                    raise ValueError(f"{model_path} does not hold the benchmarked embedding matrix")
                options = dict(job["params"])
                with contextlib.suppress(TypeError, ValueError):
                    if "progress" in inspect.signature(compress).parameters:
                        options.setdefault("progress", False)
                stage = "compress"
                with PeakRSS() as memory:
                    start = time.perf_counter()
                    wrapped = compress(
                        model,
                        ratio=job["target_ratio"],
                        tokenizer=tokenizer,
                        seed=seed,
                        inplace=True,
                        **options,
                    )
                    emb = wrapped.get_input_embeddings()
                    seconds = time.perf_counter() - start
            except Exception as exc:
                exc.add_note(f"while running LightToken ({stage})")
                raise
            with torch.no_grad():
                reconstructed = emb.weight.detach().float().cpu().clone()
            report = None
            with contextlib.suppress(Exception):
                report = emb.compression_report.to_dict()
            result.update(
                nbytes=int(emb.compressed_nbytes),
                seconds=seconds,
                wall_seconds=seconds,
                params=dict(job["params"]),
                reconstructed=reconstructed,
                module=emb,
                report=report,
            )
        else:
            import baselines

            params = dict(job["params"])
            params.pop("natural", None)
            baselines.import_backends()  # library imports are not part of the measured compression
            with PeakRSS() as memory:
                start = time.perf_counter()
                if job["family"] == "svd":
                    out = baselines.truncated_svd(e, rank=params["rank"])
                elif job["family"] == "quant":
                    out = baselines.quantize_rows(e, bits=params["bits"], group_size=params["group_size"])
                elif job["family"] == "pq":
                    out = baselines.product_quantization(e, m=params["m"], nbits=params["nbits"], seed=seed)
                else:
                    raise ValueError(f"unknown baseline family {job['family']!r}")
                wall = time.perf_counter() - start
            result.update(
                nbytes=int(out.nbytes),
                seconds=float(out.seconds),
                wall_seconds=wall,
                params=out.params,
                reconstructed=out.reconstructed,
                module=out.decoder,
                report=None,
            )
        result.update(
            ok=True,
            peak_bytes=memory.growth_bytes,
            peak_method=memory.method,
            process_peak_bytes=memory.peak_bytes,
        )
    except Exception as exc:  # noqa: BLE001 - recorded and reported, never fatal for the benchmark
        result = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}"
            + "".join(f" [{n}]" for n in getattr(exc, "__notes__", [])),
            "error_kind": _classify_error(exc),
            "traceback": traceback.format_exc(limit=8),
        }
    try:
        torch.save(result, out_path)
    except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable module: keep the numbers, drop it
        result["module_transfer_error"] = f"{type(exc).__name__}: {exc}"
        result["module"] = None
        torch.save(result, out_path)


def run_compression(job: Job, e_path: Path, model_path: str, workdir: Path, args: argparse.Namespace) -> dict:
    out_path = workdir / f"result-{os.getpid()}-{time.monotonic_ns()}.pt"
    payload = {
        "method": job.method,
        "family": job.family,
        "kind": job.kind,
        "target_ratio": job.target_ratio,
        "params": job.params,
    }
    worker_args = (payload, str(e_path), model_path, str(out_path), args.threads, args.seed)
    if args.in_process:
        compress_worker(*worker_args)
    else:
        process = mp.get_context("spawn").Process(target=compress_worker, args=worker_args)
        process.start()
        process.join(args.job_timeout)
        if process.is_alive():
            process.terminate()
            process.join(10)
            return {"ok": False, "error": f"timed out after {args.job_timeout} s", "error_kind": "timeout"}
        if process.exitcode != 0 and not out_path.exists():
            return {
                "ok": False,
                "error": f"child process exited with code {process.exitcode}",
                "error_kind": "crash",
            }
    result = torch.load(out_path, weights_only=False)  # our own file, written a moment ago
    out_path.unlink(missing_ok=True)
    return result


# ------------------------------------------------------------------------------------ evaluation
@contextlib.contextmanager
def swapped_input_embeddings(
    model: torch.nn.Module, *, module: torch.nn.Module | None = None, weight: torch.Tensor | None = None
):
    """Temporarily use ``module`` as the input embedding, or copy ``weight`` into the existing one."""
    original = model.get_input_embeddings()
    if module is not None:
        model.set_input_embeddings(module)
        try:
            yield model
        finally:
            model.set_input_embeddings(original)
        return
    saved = original.weight.detach().clone()
    with torch.no_grad():
        original.weight.copy_(weight)
    try:
        yield model
    finally:
        with torch.no_grad():
            original.weight.copy_(saved)


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class EvalContext:
    model: torch.nn.Module
    tokenizer: Any
    e: torch.Tensor
    sentences: list[str]
    reference_embeddings: torch.Tensor
    held_out: list[str]
    held_out_reference: torch.Tensor | None
    sts: tuple[list[str], list[str], list[float]] | None
    sts_reference: float | None
    lookup_ids: torch.Tensor
    forward_inputs: dict[str, torch.Tensor]
    args: argparse.Namespace


def encode_metrics(ctx: EvalContext, model: torch.nn.Module) -> dict[str, float | None]:
    fidelity_ = own_module("fidelity")

    kw = {"batch_size": ctx.args.batch_size, "max_length": ctx.args.max_length}
    embeddings = fidelity_.mean_pooled_embeddings(model, ctx.tokenizer, ctx.sentences, **kw)
    out: dict[str, float | None] = {"e2e_cosine": fidelity_.mean_cosine(ctx.reference_embeddings, embeddings)}
    out["e2e_held_out"] = None
    if ctx.held_out_reference is not None:
        held_out = fidelity_.mean_pooled_embeddings(model, ctx.tokenizer, ctx.held_out, **kw)
        out["e2e_held_out"] = fidelity_.mean_cosine(ctx.held_out_reference, held_out)
    if ctx.sts is not None:
        rho = fidelity_.sts_spearman(model, ctx.tokenizer, *ctx.sts, **kw)
        out["sts_spearman"] = rho
        out["sts_relative"] = rho / ctx.sts_reference if ctx.sts_reference else None
    else:
        out["sts_spearman"] = out["sts_relative"] = None
    return out


def evaluate(job: Job, compressed: dict[str, Any], ctx: EvalContext) -> dict[str, Any]:
    """All parent-side metrics for one finished compression."""
    fidelity_ = own_module("fidelity")

    args = ctx.args
    reconstructed: torch.Tensor = compressed["reconstructed"]
    module = compressed.get("module")
    vocab, dim = ctx.e.shape
    row: dict[str, Any] = {
        "real_ratio": vocab * dim * 4 / compressed["nbytes"],
        "nbytes": compressed["nbytes"],
        "params": compressed["params"],
        "compress_seconds": compressed["seconds"],
        "compress_wall_seconds": compressed["wall_seconds"],
        "peak_memory_bytes": compressed["peak_bytes"],
        "peak_memory_method": compressed["peak_method"],
        "peak_includes_dense_reconstruction": job.kind == "baseline",
        "child_process_peak_rss_bytes": compressed.get("process_peak_bytes"),
        "compression_report": compressed.get("report"),
    }
    if compressed.get("module_transfer_error"):
        row["module_transfer_error"] = compressed["module_transfer_error"]
    row["matrix_fidelity"] = fidelity_.matrix_fidelity(
        ctx.e, reconstructed, nn_k=args.nn_k, nn_queries=args.nn_queries, seed=args.seed
    )

    if job.kind == "lighttoken" and module is not None:
        module.eval()
        with torch.no_grad():
            looked_up = module(ctx.lookup_ids)
        row["module_vs_weight_max_abs_diff"] = float((looked_up - reconstructed[ctx.lookup_ids]).abs().max())
        swap = {"module": module}
        row["e2e_via"] = row["forward_impl"] = "LightTokenEmbedding in the model (set_input_embeddings)"
        row["lookup_impl"] = "LightTokenEmbedding.forward (decodes only the looked-up rows)"
    else:
        swap = {"weight": reconstructed}
        row["e2e_via"] = "dense reconstructed matrix copied into the model's nn.Embedding"
        row["forward_impl"] = "dense reconstructed matrix in nn.Embedding (same cost as uncompressed)"
        row["lookup_impl"] = (
            f"own decode from the stored form: {type(module).__name__}" if module is not None else None
        )
    with swapped_input_embeddings(ctx.model, **swap) as model:
        row.update(encode_metrics(ctx, model))
        row["forward_ms"] = 1e3 * median_seconds(
            lambda: model(**ctx.forward_inputs), args.forward_repeats, warmup=1
        )
    if module is not None:
        row["lookup_ms"] = 1e3 * median_seconds(lambda: module(ctx.lookup_ids), args.lookup_repeats, warmup=2)
    else:
        row["lookup_ms"] = None
    return row


# ------------------------------------------------------------------------------------ data and model
def resolve_model(name: str) -> tuple[str, str]:
    """(label for file names, folder) for ``minilm``, ``mpnet`` or a path."""
    pretrained_ = own_module("pretrained")

    if name == "minilm":
        return "minilm", str(pretrained_.default_model_path())
    if name == "mpnet":
        return "mpnet", str(pretrained_.mpnet_model_path())
    path = Path(name).expanduser()
    if not path.exists():
        raise SystemExit(f"--model must be minilm, mpnet or an existing model folder; {path} does not exist")
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.resolve().name) or "model"
    return label, str(path)


def load_held_out_sentences(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """CoLA dev sentences and RTE dev premises: text no default of LightToken was chosen on (the
    sweeps choose on SST-2 dev), for the held-out end-to-end cosine. Empty when the files are absent."""
    fidelity_ = own_module("fidelity")

    glue = Path(args.data_dir) / "glue"
    parts = [(glue / "CoLA" / "dev.parquet", "sentence"), (glue / "RTE" / "dev.parquet", "sentence1")]
    if not all(path.is_file() for path, _ in parts):
        warnings.warn(
            f"CoLA/RTE dev files not found under {glue}: the held-out e2e cosine is skipped", stacklevel=2
        )
        return [], None
    sentences = [
        text for path, column in parts for text in fidelity_.load_sentences_from_parquet(path, column)
    ]
    return sentences, " + ".join(f"{path} ({column})" for path, column in parts)


def load_eval_data(args: argparse.Namespace) -> tuple[list[str], str, tuple | None, str | None]:
    fidelity_ = own_module("fidelity")

    data_dir = Path(args.data_dir)
    sst_path = data_dir / "glue" / "SST-2" / "dev.parquet"
    if sst_path.is_file():
        sentences = fidelity_.load_sentences_from_parquet(sst_path, "sentence", limit=args.num_sentences)
        source = str(sst_path)
    else:
        warnings.warn(
            f"{sst_path} not found: using the built-in sentences (lighttoken_hf/data/sentences.txt) instead",
            stacklevel=2,
        )
        sentences = fidelity_.builtin_sentences()[: args.num_sentences]
        source = "lighttoken_hf/data/sentences.txt (fallback)"

    sts_path = data_dir / "glue" / "STS-B" / "train.parquet"
    if not sts_path.is_file():
        warnings.warn(f"{sts_path} not found: STS-B metrics are skipped", stacklevel=2)
        return sentences, source, None, None
    import pyarrow.parquet as pq

    table = pq.read_table(sts_path, columns=["sentence1", "sentence2", "label"]).to_pydict()
    total = len(table["label"])
    # The file is sorted by genre (captions first): a seeded random sample keeps the genre mix.
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(total, size=min(args.sts_limit, total), replace=False))
    sts = (
        [table["sentence1"][i] for i in rows],
        [table["sentence2"][i] for i in rows],
        [float(table["label"][i]) for i in rows],
    )
    return sentences, source, sts, f"{sts_path} ({len(rows)} of {total} rows, seeded random sample)"


# ------------------------------------------------------------------------------------ output
def _joined_text(sources: list[Any]) -> str:
    """One line naming the runs a joined table comes from (older joins list only file names)."""
    if all(isinstance(src, dict) for src in sources):
        parts = [
            f"`{src['file']}` ({', '.join(src['methods'])}; run {src['date']}, commit "
            f"`{(src['git'].get('commit') or 'none')[:7]}`{' dirty' if src['git'].get('dirty') else ''})"
            for src in sources
        ]
    else:
        parts = [f"`{src}`" for src in sources]
    return "Rows joined from " + "; ".join(parts) + " (a later run's row replaces an earlier one's)."


# ------------------------------------------------------------------------------------ output
def markdown_report(payload: dict[str, Any]) -> str:
    ref = payload["reference"]
    args = payload["args"]
    lines = [
        f"# Embedding-compression fidelity: {payload['model']['label']}",
        "",
        f"Model `{payload['model']['path']}`: vocabulary {payload['model']['vocab_size']:,} x "
        f"{payload['model']['embedding_dim']} ({payload['model']['dense_nbytes'] / 2**20:.1f} MiB in fp32). "
        f"Run {payload['date']}, commit `{payload['git']['commit'] or 'none'}`"
        f"{' (dirty tree)' if payload['git']['dirty'] else ''}, {args['threads']} thread(s), "
        f"{payload['machine']['cpu_model']}."
        + (
            " **Incomplete run**: stopped early; only the rows below finished."
            if payload.get("complete") is False
            else ""
        ),
        *(["", payload["note"]] if payload.get("note") else []),
        *(["", _joined_text(payload["joined_from"])] if payload.get("joined_from") else []),
        "",
        f"Sentences: {ref['num_sentences']} from {ref['sentences_source']}"
        + (
            f"; held out: {ref['num_held_out']} from {ref['held_out_source']}. "
            if ref.get("held_out_source")
            else ". "
        )
        + f"STS: {ref['sts_source'] or 'skipped'}. Uncompressed model: STS-B Spearman "
        f"{fmt(ref['sts_spearman'], '.4f')}, dense nn.Embedding lookup {fmt(ref['lookup_ms'], '.3f')} ms, "
        f"forward {fmt(ref['forward_ms'], '.0f')} ms (batch {FORWARD_SHAPE[0]} x {FORWARD_SHAPE[1]}).",
        "",
        "| method | target | ratio | size KiB | rel err | mean cos | min cos | NN@k | e2e cos | e2e held out "
        "| STS ρ | STS rel | compress s | peak MiB | lookup ms | fwd ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    errors = []
    for row in payload["results"]:
        target = "natural" if row["target_ratio"] is None else f"{row['target_ratio']:g}x"
        if row.get("error"):
            errors.append(f"- `{row['method']}` @ {target}: {row['error']}")
            continue
        fid = row["matrix_fidelity"]
        lines.append(
            "| "
            + " | ".join(
                [
                    row["method"],
                    target,
                    fmt(row["real_ratio"], ".1f"),
                    fmt(row["nbytes"] / 1024, ",.0f"),
                    fmt(fid["rel_error"], ".4f"),
                    fmt(fid["mean_row_cosine"], ".4f"),
                    fmt(fid["min_row_cosine"], ".3f"),
                    fmt(fid["nn_overlap"], ".3f"),
                    fmt(row["e2e_cosine"], ".4f"),
                    fmt(row.get("e2e_held_out"), ".4f"),
                    fmt(row["sts_spearman"], ".4f"),
                    fmt(row["sts_relative"], ".3f"),
                    fmt(row["compress_seconds"], ".2f"),
                    fmt(row["peak_memory_bytes"] / 2**20, ".0f"),
                    fmt(row["lookup_ms"], ".3f"),
                    fmt(row["forward_ms"], ".0f"),
                ]
            )
            + " |"
        )
    lines += [
        "",
        f"NN@k: overlap of the top-{args['nn_k']} cosine neighbours of {args['nn_queries']} random rows. "
        "e2e cos: mean cosine between the original and the compressed model's mean-pooled sentence "
        "embeddings (e2e held out: the same on text no default was chosen on; – where not measured). "
        "STS rel: STS-B Spearman relative to the uncompressed model. peak MiB: resident-memory "
        f"growth during the compression ({payload['settings']['compression_isolation']}; baselines include "
        "their returned dense reconstruction). "
        "lookup ms: one 32 x 128 batch of ids through the method's own decoder (LightTokenEmbedding for "
        "LightToken). fwd ms: full model forward; for baselines the dense reconstruction is in a plain "
        "nn.Embedding, so it is the uncompressed cost.",
    ]
    if errors:
        lines += ["", "Not run / failed:", "", *errors]
    return "\n".join(lines) + "\n"


def plot_results(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["results"] if not r.get("error")]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    panels = [
        ("e2e_cosine", "sentence-embedding cosine (higher is better)"),
        ("rel_error", "relative Frobenius error (lower is better)"),
    ]
    cmap = plt.get_cmap("tab20")
    for ax, (key, title) in zip(axes, panels, strict=True):
        for index, method in enumerate(methods):
            points = sorted(
                (r["real_ratio"], r["matrix_fidelity"]["rel_error"] if key == "rel_error" else r[key])
                for r in rows
                if r["method"] == method
            )
            points = [(x, y) for x, y in points if y is not None]
            if not points:
                continue
            family = next((r["family"] for r in rows if r["method"] == method), "")
            style = "-" if family == "lighttoken" else "--"
            marker = {"lighttoken": "o", "quant": "s", "svd": "^", "pq": "D"}.get(family, "o")
            ax.plot(*zip(*points, strict=True), style, marker=marker, color=cmap(index % 20), label=method)
        ax.set_xscale("log")
        ax.set_xlabel("real compression ratio (fp32 bytes / stored bytes, log scale)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.suptitle(f"{payload['model']['label']}: fidelity vs. compression ratio")
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="minilm", help="minilm, mpnet, or a folder loadable by AutoModel")
    parser.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=None,
        help=f"target ratios (default {DEFAULT_RATIOS}; --quick: {QUICK_RATIOS})",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="keep only these methods: names (svd-fp16, int4-g32, pq, lighttoken-no-freq, ...), "
        "families (svd, quant, int8, int4, int2, pq, lighttoken), 'baselines', or globs",
    )
    parser.add_argument(
        "--data-dir",
        default=str(REPO_ROOT.parent / "shared" / "data"),
        help="folder with glue/SST-2/dev.parquet and glue/STS-B/train.parquet",
    )
    parser.add_argument(
        "--num-sentences",
        type=int,
        default=None,
        help="SST-2 dev sentences for the e2e cosine (default all 872; --quick: 200)",
    )
    parser.add_argument(
        "--sts-limit", type=int, default=None, help="STS-B train pairs (default 1500; --quick: 300)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: ratios 25 100, 200 sentences, 300 STS pairs"
    )
    parser.add_argument(
        "--group-sizes",
        type=int,
        nargs="*",
        default=[32],
        help="group sizes for the group-wise int8/int4/int2 baselines (rowwise always runs)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch / faiss threads in every process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nn-k", type=int, default=10)
    parser.add_argument("--nn-queries", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lookup-repeats", type=int, default=None, help="default 20 (--quick: 5)")
    parser.add_argument("--forward-repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--job-timeout", type=float, default=3600.0, help="seconds per compression")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="compress in this process (debugging; peak memory is then less isolated)",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only write the table and plot (.md, .png beside it) of an earlier run's JSON (also a .partial.json)",
    )
    parser.add_argument(
        "--join",
        nargs="+",
        metavar="JSON",
        help="join the rows of earlier runs of the same model, sentences and STS pairs into one table "
        "(a row of a later file replaces the same method and target of an earlier one); needs --output-name",
    )
    parser.add_argument(
        "--note", default=None, help="with --join: a sentence saying why and how the runs differ"
    )
    parser.add_argument("--output-dir", default=str(BENCH_DIR / "results"))
    parser.add_argument(
        "--output-name",
        default=None,
        help="file stem (default fidelity_<model>, or fidelity_<model>_quick with --quick)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "ratios": (QUICK_RATIOS if quick else DEFAULT_RATIOS),
        "num_sentences": (200 if quick else None),
        "sts_limit": (300 if quick else 1500),
        "lookup_repeats": (5 if quick else 20),
        "forward_repeats": (1 if quick else 3),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def render(json_path: Path) -> int:
    """Write ``<stem>.md`` and ``<stem>.png`` for a saved run (``x.partial.json`` -> ``x.md``)."""
    payload = json.loads(json_path.read_text())
    stem = json_path.name.removesuffix(".json").removesuffix(".partial")
    table = markdown_report(payload)
    (json_path.parent / f"{stem}.md").write_text(table)
    try:
        plot_results(payload, json_path.parent / f"{stem}.png")
    except ImportError as exc:  # the table is written; only the plot needs the bench extra
        log(f"no plot ({exc}): pip install -e '.[bench]' for matplotlib")
    print(table)
    return 0


#: reference fields that must agree for rows of two runs to share one table
JOIN_KEYS = ("num_sentences", "sentences_source", "num_held_out", "held_out_source", "sts_source")


def join_runs(paths: list[Path], out: Path, note: str | None) -> int:
    """Write ``out`` (JSON, .md, .png) with the rows of ``paths`` (later files win on the same method and
    target); the header and reference line are the first file's. Refuses runs on other data."""
    payloads = [json.loads(p.read_text()) for p in paths]
    first = payloads[0]
    for path, payload in zip(paths[1:], payloads[1:]):
        if payload["model"]["path"] != first["model"]["path"]:
            raise SystemExit(f"error: {path} is a run on another model ({payload['model']['path']})")
        for key in JOIN_KEYS:
            if payload["reference"].get(key) != first["reference"].get(key):
                raise SystemExit(f"error: {path} used other evaluation data ({key} differs from {paths[0]})")
    rows: dict[tuple, dict] = {}
    for payload in payloads:
        for row in payload["results"]:
            rows[(row["method"], row["target_ratio"])] = row
    joined = {
        **first,
        "results": list(rows.values()),
        "complete": all(p.get("complete", True) for p in payloads),
        "note": note or "",
        "joined_from": [
            {
                "file": p.name,
                "date": d["date"],
                "git": d["git"],
                "methods": sorted({r["method"] for r in d["results"]}),
            }
            for p, d in zip(paths, payloads)
        ],
    }
    out.write_text(json.dumps(joined, indent=2))
    return render(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(Path(args.render))
    if args.join:
        if not args.output_name:
            raise SystemExit("error: --join needs --output-name (the joined file's stem)")
        return join_runs(
            [Path(p) for p in args.join], Path(args.output_dir) / f"{args.output_name}.json", args.note
        )
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the compression children
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _set_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    fidelity_ = own_module("fidelity")

    label, model_path = resolve_model(args.model)
    stem = args.output_name or f"fidelity_{label}" + ("_quick" if args.quick else "")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    info = machine_info()

    log(f"loading {model_path}")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).float().eval()
    e = model.get_input_embeddings().weight.detach().float().clone()
    vocab, dim = e.shape

    sentences, sentences_source, sts, sts_source = load_eval_data(args)
    kw = {"batch_size": args.batch_size, "max_length": args.max_length}
    log(f"reference: {len(sentences)} sentences, {len(sts[0]) if sts else 0} STS pairs")
    reference_embeddings = fidelity_.mean_pooled_embeddings(model, tokenizer, sentences, **kw)
    held_out, held_out_source = load_held_out_sentences(args)
    held_out_reference = (
        fidelity_.mean_pooled_embeddings(model, tokenizer, held_out, **kw) if held_out else None
    )
    sts_reference = fidelity_.sts_spearman(model, tokenizer, *sts, **kw) if sts else None
    generator = torch.Generator().manual_seed(args.seed)
    lookup_ids = torch.randint(0, vocab, LOOKUP_SHAPE, generator=generator)
    forward_ids = torch.randint(0, vocab, FORWARD_SHAPE, generator=generator)
    forward_inputs = {"input_ids": forward_ids, "attention_mask": torch.ones_like(forward_ids)}
    dense_lookup = torch.nn.Embedding.from_pretrained(e)
    reference = {
        "num_sentences": len(sentences),
        "sentences_source": sentences_source,
        "num_held_out": len(held_out),
        "held_out_source": held_out_source,
        "sts_source": sts_source,
        "sts_spearman": sts_reference,
        "lookup_ms": 1e3 * median_seconds(lambda: dense_lookup(lookup_ids), args.lookup_repeats, warmup=2),
        "lookup_impl": "dense fp32 nn.Embedding of the original matrix",
        "forward_ms": 1e3 * median_seconds(lambda: model(**forward_inputs), args.forward_repeats, warmup=1),
    }
    ctx = EvalContext(
        model,
        tokenizer,
        e,
        sentences,
        reference_embeddings,
        held_out,
        held_out_reference,
        sts,
        sts_reference,
        lookup_ids,
        forward_inputs,
        args,
    )

    def build_payload(complete: bool) -> dict[str, Any]:
        with contextlib.suppress(OSError):
            info["load_average_at_end"] = list(os.getloadavg())
        return clean_json(
            {
                "benchmark": "fidelity",
                "date": started.isoformat(timespec="seconds"),
                "duration_seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds(),
                "git": git_info(),
                "machine": info,
                "args": {**vars(args), "argv": sys.argv[1:] if argv is None else argv},
                "model": {
                    "label": label,
                    "path": model_path,
                    "class": type(model).__name__,
                    "vocab_size": vocab,
                    "embedding_dim": dim,
                    "dense_nbytes": vocab * dim * 4,
                },
                "settings": {
                    "lookup_batch": list(LOOKUP_SHAPE),
                    "forward_batch": list(FORWARD_SHAPE),
                    "lighttoken_variants": LIGHTTOKEN_VARIANTS,
                    "compression_isolation": "in-process" if args.in_process else "spawned child process",
                },
                "reference": reference,
                "results": results,
                "complete": complete,
            }
        )

    jobs = select_jobs(build_jobs(vocab, dim, args.ratios, args.group_sizes), args.methods)
    if not jobs:
        raise SystemExit(f"--methods {args.methods} matches no method")
    results: list[dict[str, Any]] = []
    partial_path = out_dir / f"{stem}.partial.json"
    workdir = Path(tempfile.mkdtemp(prefix="tmp-fidelity-", dir=out_dir))
    try:
        e_path = workdir / "E.pt"
        torch.save(e, e_path)
        for index, job in enumerate(jobs, start=1):
            row: dict[str, Any] = {
                "method": job.method,
                "family": job.family,
                "kind": job.kind,
                "target_ratio": job.target_ratio,
                "job_params": job.params,
            }
            if job.unreachable:
                row.update(error=f"unreachable: {job.unreachable}", error_kind="unreachable")
                results.append(row)
                log(f"[{index}/{len(jobs)}] {job.label}: skipped ({job.unreachable})")
                continue
            log(f"[{index}/{len(jobs)}] {job.label}: compressing")
            compressed = run_compression(job, e_path, model_path, workdir, args)
            if not compressed.get("ok"):
                row.update({k: compressed.get(k) for k in ("error", "error_kind", "traceback")})
                log(f"[{index}/{len(jobs)}] {job.label}: FAILED {compressed.get('error')}")
                results.append(row)
                continue
            try:
                row.update(evaluate(job, compressed, ctx))
            except Exception as exc:  # noqa: BLE001 - one broken method must not sink the run
                row.update(
                    error=f"evaluation failed: {type(exc).__name__}: {exc}",
                    error_kind="evaluation",
                    traceback=traceback.format_exc(limit=8),
                )
            results.append(row)
            if not row.get("error"):
                fid = row["matrix_fidelity"]
                log(
                    f"[{index}/{len(jobs)}] {job.label}: ratio {row['real_ratio']:.1f}, rel err "
                    f"{fid['rel_error']:.4f}, e2e cos {row['e2e_cosine']:.4f}"
                )
            del compressed
            gc.collect()
            # a long run leaves its finished rows on disk even if it is stopped later
            partial_path.write_text(json.dumps(build_payload(complete=False), indent=2) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    payload = build_payload(complete=True)
    json_path, md_path, png_path = (out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png"))
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown_report(payload)
    md_path.write_text(table)
    try:
        plot_results(payload, png_path)
    except Exception as exc:  # noqa: BLE001 - the numbers matter more than the picture
        log(f"plot failed: {type(exc).__name__}: {exc}")
    print(table)
    partial_path.unlink(missing_ok=True)
    log(f"wrote {json_path}, {md_path}, {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
