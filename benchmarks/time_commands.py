"""Time the README's two commands (without their installs): the main job and the whole test suite.

    python benchmarks/time_commands.py                  # both; writes benchmarks/results/commands_timing.json
    python benchmarks/time_commands.py --only compress  # or --only tests

The main job is ``lighttoken compress --ratio 25 --out <tmp>`` on the bundled all-MiniLM-L6-v2 (loading,
compression, the end-to-end check and the save); the suite is ``python -m pytest -q`` as ``.ci/run`` runs it.
Each runs in a fresh process with the machine's load average recorded before and after, since a shared
machine is slower. The README quotes these numbers (``update_readme.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402

OUTPUT = REPO_ROOT / "benchmarks" / "results" / "commands_timing.json"


def _timed(cmd: list[str], cwd: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
    return {
        "command": " ".join(cmd),
        "seconds": seconds,
        "returncode": result.returncode,
        "output_tail": tail,
        "load_average_before": load[0] if load else None,
        "load_average_after": os.getloadavg()[0] if load else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("compress", "tests"))
    args = parser.parse_args(argv)
    previous = json.loads(OUTPUT.read_text(encoding="utf-8")) if OUTPUT.is_file() else {}
    timings = dict(previous.get("timings") or {})
    lighttoken = shutil.which("lighttoken") or "lighttoken"
    if args.only in (None, "compress"):
        with tempfile.TemporaryDirectory(prefix="lighttoken-timing-") as tmp:
            out = Path(tmp) / "minilm-lighttoken-25x"
            timings["compress"] = _timed([lighttoken, "compress", "--ratio", "25", "--out", str(out)], Path(tmp))
            timings["compress"]["command"] = "lighttoken compress --ratio 25 --out minilm-lighttoken-25x"
    if args.only in (None, "tests"):
        timings["tests"] = _timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], REPO_ROOT)
        timings["tests"]["command"] = "python -m pytest -q"
    payload = {
        "benchmark": "commands_timing",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "timings": timings,
    }
    write_json(OUTPUT, payload)
    for name, timing in timings.items():
        print(f"{name}: {timing['seconds']:.0f} s (exit {timing['returncode']}): {timing['command']}")
    return 0 if all(t["returncode"] == 0 for t in timings.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
