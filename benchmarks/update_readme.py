"""Write the results tables of README.md and benchmarks/README.md from the benchmark result files: no
number in them is typed by hand.

    python benchmarks/update_readme.py           # rewrite every results block of both files
    python benchmarks/update_readme.py --check   # exit 1 if a block differs from its result file (the suite runs this)

Each block sits between ``<!-- RESULTS:<name> -->`` and ``<!-- /RESULTS:<name> -->``; :data:`BLOCKS` names its
result file (in ``benchmarks/results/``) and how it is rendered, :data:`DOCUMENTS` which file holds it. The full
tables, with every metric and alternative, are the ``.md`` files the benchmarks write beside the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BENCHMARKS_README = ROOT / "benchmarks" / "README.md"

#: Downstream method -> label in the README (methods missing here are not shown).
DOWNSTREAM_LABELS = {
    "original": "original (dense, fp32)",
    "lighttoken-25x": "**LightToken 25x**",
    "lighttoken-100x": "LightToken 100x",
    "pq-25x": "PQ 25x",
    "svd-25x": "truncated SVD 25x",
}


def _source(name: str, data: dict, threads: int | None) -> str:
    machine = data.get("machine") or {}
    cpu = machine.get("cpu_model") or "unknown CPU"
    cores = machine.get("cpu_count")
    where = f"{cpu}, {cores} cores" if cores else cpu
    per = f", {threads} thread(s) per process" if threads else ""
    return f"`benchmarks/results/{name}` ({str(data.get('date', ''))[:10]}, {where}{per})"


def _cos(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}" if value < 0.995 else f"{value:.4f}"


def _pair(row: dict | None) -> str:
    if row is None:
        return "–"
    held = row.get("e2e_held_out")
    return _cos(row.get("e2e_cosine")) + (f" / {_cos(held)}" if held is not None else "")


def render_fidelity(name: str, data: dict) -> str:
    """Condensed fidelity table: per target ratio, LightToken's default against PQ and truncated SVD."""
    rows: dict[tuple[str, float], dict] = {}
    for row in data["results"]:
        if row.get("target_ratio") is not None and row.get("e2e_cosine") is not None:
            rows[(row["method"], float(row["target_ratio"]))] = row
    targets = sorted(t for (m, t) in rows if m == "lighttoken-default")
    lines = [
        f"Source: {_source(name, data, (data.get('args') or {}).get('threads'))}. e2e cos: mean cosine between "
        "the original and the compressed model's sentence embeddings (SST-2 dev / held-out CoLA + RTE text).",
        "",
        "| target | LightToken e2e cos | LightToken rel err | PQ e2e cos (real ratio) | truncated SVD e2e cos |",
        "|---|---|---:|---|---|",
    ]
    for target in targets:
        light, pq, svd = (rows.get((m, target)) for m in ("lighttoken-default", "pq", "svd-fp16"))
        rel = light["matrix_fidelity"]["rel_error"]
        pq_text = f"{_pair(pq)} ({pq['real_ratio']:.1f}x)" if pq else "–"
        lines.append(f"| {target:g}x | **{_pair(light)}** | {rel:.3f} | {pq_text} | {_pair(svd)} |")
    return "\n".join(lines)


def render_downstream(name: str, data: dict) -> str:
    """Average downstream score (0-100) per storage method, word embedding frozen in all of them."""
    lines = [
        f"Source: {_source(name, data, (data.get('args') or {}).get('threads'))}; SST-2, RTE, CoLA, STS-B and "
        "SQuAD v1.1, word embedding frozen in every method.",
        "",
        "| method | real ratio | average score | vs original |",
        "|---|---:|---:|---:|",
    ]
    for method, label in DOWNSTREAM_LABELS.items():
        summary = (data.get("summary") or {}).get(method)
        if not summary or not summary.get("average_complete"):
            continue
        ratio = data["methods_info"][method]["real_ratio"]
        delta = summary.get("delta_average") or 0.0
        lines.append(f"| {label} | {ratio:.1f}x | {summary['average']:.2f} | {delta:+.2f} |")
    return "\n".join(lines)


def render_commands(name: str, data: dict) -> str:
    """How long the README's two commands took (without their installs)."""
    timings = data["timings"]
    lines = [f"Source: {_source(name, data, None)}.", ""]
    for key, what in (("compress", "the main job"), ("tests", "the whole test suite")):
        timing = timings.get(key)
        if timing is None:
            continue
        seconds = timing["seconds"]
        took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
        load = timing.get("load_average_before")
        busy = f", load average {load:.1f} before" if load is not None else ""
        lines.append(f"* {what}, `{timing['command']}`: {took}{busy}")
    return "\n".join(lines)


def render_lm(name: str, data: dict) -> str:
    """Decoder LM through the CLI: held-out perplexity, KL, top-1, time and memory per ratio."""
    texts = data["texts"]
    lines = [
        f"Source: {_source(name, data, None)}; {data['model']['file']} (GGUF, dequantized, is the original); "
        f"perplexity on {texts['count']} held-out Wikipedia paragraphs (SQuAD v1.1 contexts, up to "
        f"{texts['max_length']} tokens).",
        "",
        "| real ratio | perplexity (original → compressed) | next-token KL | top-1 agreement | compression "
        "| peak memory | generation tokens/s (original) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in data["runs"]:
        held = run["held_out"]
        original_speed = run.get("original_tokens_per_second") or data["original_tokens_per_second"]
        lines.append(
            f"| {run['ratio']:.1f}x | {held['perplexity_original']:.2f} → {held['perplexity_compressed']:.2f} "
            f"({held['perplexity_increase']:+.1%}) | {held['next_token_kl']:.3f} | {held['top1_agreement']:.3f} "
            f"| {run['seconds']:.0f} s | {run['peak_rss_bytes'] / 2**30:.1f} GiB "
            f"| {run['tokens_per_second']:.1f} ({original_speed:.1f}) |"
        )
    return "\n".join(lines)


def render_lm_alternatives(name: str, data: dict) -> str:
    """A decoder LM's tied matrix by LightToken and the alternatives: perplexity, KL, top-1 by ratio."""
    lines = [
        f"Source: {_source(name, data, None)}; {data['model']['file']}, tied matrix replaced; perplexity on "
        f"{data['texts']['count']} held-out paragraphs, up to {data['texts']['max_length']} tokens (original "
        f"{data['perplexity_original']:.2f}).",
        "",
        "| method | ratio vs fp32 | perplexity | next-token KL | top-1 agreement |",
        "|---|---:|---|---:|---:|",
    ]
    for row in sorted(data["rows"], key=lambda r: r["ratio_vs_fp32"]):
        method = f"**{row['method']}**" if row["family"] == "lighttoken" else row["method"]
        lines.append(
            f"| {method} | {row['ratio_vs_fp32']:.1f}x | {row['perplexity_compressed']:,.2f} "
            f"({row['perplexity_increase']:+.1%}) | {row['next_token_kl']:.3f} | {row['top1_agreement']:.3f} |"
        )
    return "\n".join(lines)


#: Matrix names of the scaling benchmark -> label in the README.
SCALING_LABELS = {"minilm": "all-MiniLM-L6-v2", "smollm2": "SmolLM2-135M", "gemma3": "Gemma-3-270M"}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def render_scaling(name: str, data: dict) -> str:
    """Compression time and peak memory growth of each real matrix per ratio, and the fitted cost model."""
    runs = [r for r in data["runs"] if r["matrix"] in SCALING_LABELS]
    ratios = sorted({r["ratio_target"] for r in runs})
    lines = [
        f"Source: {_source(name, data, None)}; the matrix alone, defaults, idle. Memory: peak "
        "resident-size growth in fp32 matrices.",
        "",
        "| matrix | " + " | ".join(f"{r:g}x: time, memory" for r in ratios) + " |",
        "|---|" + "---:|" * len(ratios),
    ]
    for matrix, label in SCALING_LABELS.items():
        cells = []
        for ratio in ratios:
            run = next((r for r in runs if r["matrix"] == matrix and r["ratio_target"] == ratio), None)
            cells.append(
                "–" if run is None else f"{_duration(run['seconds'])}, {run['peak_rss_growth_x_matrix']:.1f}x"
            )
        shape = next((f"{r['rows']:,} x {r['dim']:,}" for r in runs if r["matrix"] == matrix), None)
        if shape is not None:
            lines.append(f"| {label} ({shape}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Whole-model method -> label in the README (methods missing here are not shown).
WHOLE_MODEL_LABELS = {
    "original-fp32": "original fp32",
    "torchao-int8-everything": "torchao int8 everything (embeddings too)",
    "compressed-tensors-int4-everything": "compressed-tensors int4 everything (embeddings too)",
    "lighttoken-4x-int8-backbone": "LightToken 4x, int8 backbone",
    "lighttoken-4x-int4-backbone": "LightToken 4x, int4 backbone",
    "lighttoken-8x-int8-backbone": "LightToken 8x, int8 backbone",
    "lighttoken-8x-int4-backbone": "LightToken 8x, int4 backbone",
    "lighttoken-25x-fp32-backbone": "LightToken 25x, fp32 backbone",
    "lighttoken-25x-int8-backbone": "LightToken 25x, int8 backbone",
    "lighttoken-25x-int4-backbone": "**LightToken 25x, int4 backbone**",
    "lighttoken-100x-int8-backbone": "LightToken 100x, int8 backbone",
    "lighttoken-100x-int4-backbone": "LightToken 100x, int4 backbone",
}


def render_whole_model(name: str, data: dict) -> str:
    """Every stored byte of the model against its end-to-end cosine and STS-B Spearman, per method."""
    rows = {r["method"]: r for r in data["rows"]}
    lines = [
        f"Source: {_source(name, data, None)}; held-out CoLA/RTE dev text for the end-to-end cosine.",
        "",
        "| model | stored | vs fp32 | end-to-end cosine | STS-B Spearman |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, label in WHOLE_MODEL_LABELS.items():
        if method in rows:
            r = rows[method]
            lines.append(f"| {label} | {r['nbytes'] / 1e6:.1f} MB | {r['ratio_vs_fp32']:.2f}x | "
                         f"{r['e2e_cosine_held_out']:.4f} | {r['sts_spearman']:.4f} |")  # fmt: skip
    return "\n".join(lines)


def _calibration(data: dict) -> str:
    """The source line's calibration clause, for a run given calibration texts (``--calibration-texts``)."""
    calibration = data.get("calibration", {})
    if "count" not in calibration:
        int4 = calibration.get("int4")
        return f"; calibration text: the library's default ({int4})" if int4 else ""
    return f"; calibration text (`calibration_texts`): the first {calibration['count']} unique contexts"


def render_whole_model_lm(name: str, data: dict) -> str:
    """A decoder LM's whole-model bytes against perplexity (relative to the original), per method."""
    lines = [
        f"Source: {_source(name, data, None)}; perplexity on the last {data['texts']['count']} unique SQuAD "
        f"train contexts (up to {data['texts']['max_length']} tokens each){_calibration(data)}.",
        "",
        "| model | stored | vs fp32 | vs bf16 | perplexity | vs original | top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        lines.append(f"| {r['method']} | {r['nbytes'] / 1e6:.1f} MB | {r['ratio_vs_fp32']:.2f}x | "
                     f"{r['ratio_vs_bf16']:.2f}x | {r['perplexity']:.2f} | {r['perplexity_increase']:+.1%} | "
                     f"{r['top1_agreement']:.3f} |")  # fmt: skip
    return "\n".join(lines)


#: block name -> (result file or files, renderer); the runs of several files of one benchmark are shown together
BLOCKS: dict[str, tuple[str | tuple[str, ...], Callable[[str, dict], str]]] = {
    "commands": ("commands_timing.json", render_commands),
    "minilm": ("fidelity_minilm_int8_joined.json", render_fidelity),
    "mpnet": ("fidelity_mpnet_int8.json", render_fidelity),
    "gemma3": (("lm_cli_gemma3.json", "lm_cli_gemma3_25x.json"), render_lm),
    "smollm2_alternatives": ("lm_smollm2.json", render_lm_alternatives),
    "downstream": ("downstream_minilm.json", render_downstream),
    "scaling": ("scaling.json", render_scaling),
    "whole_model": ("whole_model_minilm.json", render_whole_model),
    "whole_model_gemma3": ("whole_model_gemma3.json", render_whole_model_lm),
    "whole_model_gemma3_defaults": ("whole_model_gemma3_default_calibration.json", render_whole_model_lm),
}


#: document -> the blocks it holds (every block of :data:`BLOCKS` in one of them): the guide keeps the headline
#: results, benchmarks/README.md the rest.
DOCUMENTS: dict[Path, tuple[str, ...]] = {
    README: ("commands", "minilm", "whole_model", "whole_model_gemma3_defaults"),
    BENCHMARKS_README: ("mpnet", "gemma3", "smollm2_alternatives", "downstream", "scaling", "whole_model_gemma3"),
}


def render_block(name: str) -> str:
    files, renderer = BLOCKS[name]
    if isinstance(files, str):
        return renderer(files, json.loads((RESULTS / files).read_text(encoding="utf-8")))
    parts = [json.loads((RESULTS / file).read_text(encoding="utf-8")) for file in files]
    data = {**parts[0], "runs": []}
    for part in parts:  # each run keeps its own file's reference figures
        data["runs"] += [{"original_tokens_per_second": part.get("original_tokens_per_second"), **run}
                         for run in part["runs"]]  # fmt: skip
    return renderer(" + ".join(files), data)


def updated(content: str, names: tuple[str, ...] | None = None) -> str:
    """``content`` (a README) with its results blocks (``names``, default all) rendered anew from their files."""
    for name in BLOCKS if names is None else names:
        start, end = f"<!-- RESULTS:{name} -->", f"<!-- /RESULTS:{name} -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
        if not pattern.search(content):
            raise ValueError(f"the document has no block {start} ... {end}")
        match = pattern.search(content)
        content = content[: match.start()] + f"{start}\n{render_block(name)}\n{end}" + content[match.end() :]
    return content


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether the documents are up to date")
    args = parser.parse_args(argv)
    stale = []
    for document, names in DOCUMENTS.items():
        content = document.read_text(encoding="utf-8")
        new = updated(content, names)
        if new != content:
            stale.append(document.relative_to(ROOT).as_posix())
            if not args.check:
                document.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"results out of date in {', '.join(stale)}: run python benchmarks/update_readme.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
