"""What every benchmark script records and how it writes it: machine and git facts, JSON-safe values,
atomic JSON files and table cells.

Imported by the scripts in this folder (they put it on ``sys.path``); torch/numpy are imported lazily so
that the pure helpers stay cheap to import in tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["clean_json", "fmt", "git_info", "machine_info", "write_json"]


def machine_info() -> dict[str, Any]:
    """CPU model and count, the cores this process may use, library versions, memory and load average."""
    import numpy as np
    import torch
    import transformers

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }
    for module_name in ("faiss", "torchao"):
        with contextlib.suppress(Exception):
            versions[module_name] = __import__(module_name).__version__
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "versions": versions,
    }
    with contextlib.suppress(Exception):
        import psutil

        info["memory_total_bytes"] = psutil.virtual_memory().total
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = list(os.getloadavg())
    return info


def git_info() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of this repository (``None`` values outside a git checkout).

    ``dirty`` means tracked files differ from the commit; untracked files (such as the results a run is
    writing) do not count."""

    def run(*cmd: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO_ROOT), *cmd], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def clean_json(value: Any) -> Any:
    """JSON-safe copy (``lighttoken_hf.jsonio.to_json``): NaN/inf null, tensors/numpy values plain numbers."""
    from lighttoken_hf.jsonio import to_json

    return to_json(value)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` to ``path`` atomically, JSON-safe (``lighttoken_hf.jsonio.write_json``)."""
    from lighttoken_hf.jsonio import write_json as write

    write(path, payload)


def fmt(value: Any, spec: str) -> str:
    """``format(value, spec)``, or ``"–"`` for a missing or non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def pareto_front(rows: list[dict], x: str, y: str, *, lower_is_better: bool = False) -> list[dict]:
    """The rows no other row beats on both ``x`` (larger is better) and ``y``, sorted by ``x``."""
    sign = -1.0 if lower_is_better else 1.0
    front, best = [], -math.inf
    for row in sorted(rows, key=lambda r: -r[x]):
        if sign * row[y] > best:
            front.append(row)
            best = sign * row[y]
    return sorted(front, key=lambda r: r[x])
